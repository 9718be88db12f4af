"""Jitter buffer: any reordering within the window comes out in order, across the u16 wrap;
duplicates and late packets dropped and counted; overflow declares losses; SSRC change."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.ingest.rtp.jitter import JitterBuffer
from daemon.ingest.rtp.packet import RtpPacket


def pkt(seq: int, ssrc: int = 1) -> RtpPacket:
    return RtpPacket(False, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc, (), b"")


def bounded_shuffle(n: int, window: int) -> st.SearchStrategy[list[int]]:
    """Permutations of range(n) in which no packet arrives more than window-1 places late: any
    permutation of each block of `window` consecutive packets (and blocks stay in order)."""
    def build(perms: list[list[int]]) -> list[int]:
        out: list[int] = []
        for b, perm in enumerate(perms):
            out += [b * window + i for i in perm]
        return [x for x in out if x < n]
    blocks = (n + window - 1) // window
    return st.lists(st.permutations(list(range(window))), min_size=blocks, max_size=blocks).map(build)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), start=st.integers(0, 65535), n=st.integers(1, 120), window=st.integers(2, 16))
def test_reordering_within_window_comes_out_in_order(data: st.DataObject, start: int, n: int, window: int) -> None:
    order = data.draw(bounded_shuffle(n, window))
    jb = JitterBuffer(window)
    out = []
    for i in order:
        out += jb.push(pkt(start + i))
    out += jb.flush()
    assert [p.sequence for p in out] == [(start + i) & 0xFFFF for i in range(n)]
    assert jb.stats.lost == 0 and jb.stats.duplicates == 0


@given(start=st.integers(0, 65535), dups=st.lists(st.integers(0, 29), max_size=20))
def test_duplicates_dropped_and_counted(start: int, dups: list[int]) -> None:
    jb = JitterBuffer(8)
    out = []
    for i in range(30):
        out += jb.push(pkt(start + i))
        if i in dups:
            out += jb.push(pkt(start + i))  # held (duplicate) or already released (late)
    out += jb.flush()
    assert [p.sequence for p in out] == [(start + i) & 0xFFFF for i in range(30)]
    assert jb.stats.late + jb.stats.duplicates == len(set(dups))


def test_wrap_and_loss_by_overflow() -> None:
    jb = JitterBuffer(4)
    out = []
    for seq in (65533, 65534, 65535, 1, 2, 3, 4, 5):  # 0 never arrives
        out += jb.push(pkt(seq))
    # 4 arriving 4 ahead of the missing 0 declares it lost; everything held then plays out
    assert [p.sequence for p in out] == [65533, 65534, 65535, 1, 2, 3, 4, 5]
    assert jb.stats.lost == 1 and jb.flush() == []


def test_ssrc_change_starts_a_new_substream() -> None:
    jb = JitterBuffer(4)
    out = jb.push(pkt(100, ssrc=1)) + jb.start_playout() + jb.push(pkt(102, ssrc=1))
    out += jb.push(pkt(7000, ssrc=2)) + jb.push(pkt(7001, ssrc=2)) + jb.start_playout()
    assert [(p.ssrc, p.sequence) for p in out] == [(1, 100), (1, 102), (2, 7000), (2, 7001)]
    assert jb.stats.ssrc_changes == 1 and jb.stats.lost == 1
