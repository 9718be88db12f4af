"""Jitter buffer: any reordering within the window comes out in order, across the u16 wrap;
duplicates and late packets dropped and counted; overflow declares losses; SSRC change after
probation; a rewind or large jump re-synchronises (RFC 3550 A.1); every packet is accounted for."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.ingest.rtp.jitter import JitterBuffer
from daemon.ingest.rtp.packet import RtpPacket
from daemon.ingest.rtp.seq import MAX_DROPOUT, MAX_MISORDER, MIN_SEQUENTIAL


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


def accounted(jb: JitterBuffer) -> int:
    s = jb.stats
    return s.released + s.duplicates + s.late + s.probation + s.jumps


@settings(max_examples=200, deadline=None)
@given(data=st.data(), start=st.integers(0, 65535), n=st.integers(0, 120), window=st.integers(2, 16))
def test_reordering_within_window_comes_out_in_order(data: st.DataObject, start: int, n: int, window: int) -> None:
    # the source's first MIN_SEQUENTIAL packets arrive in order (A.1 probation), then any bounded shuffle
    order = list(range(MIN_SEQUENTIAL)) + [MIN_SEQUENTIAL + i for i in data.draw(bounded_shuffle(n, window))]
    jb = JitterBuffer(window)
    out = []
    for i in order:
        out += jb.push(pkt(start + i))
    out += jb.flush()
    assert [p.sequence for p in out] == [(start + i) & 0xFFFF for i in range(len(order))]
    assert jb.stats.lost == 0 and jb.stats.duplicates == 0 and jb.stats.probation == 0


@settings(max_examples=200, deadline=None)
@given(data=st.data(), start=st.integers(0, 65535), n=st.integers(1, 60), window=st.integers(1, 16))
def test_any_bounded_shuffle_comes_out_in_order_and_is_accounted_for(data: st.DataObject, start: int, n: int,
                                                                      window: int) -> None:
    # reordering from the very first packet may delay validation, but never reorders nor loses track
    order = data.draw(bounded_shuffle(n, window))
    jb = JitterBuffer(window)
    out = []
    for i in order:
        out += jb.push(pkt(start + i))
    out += jb.flush()
    offsets = [(p.sequence - start) & 0xFFFF for p in out]
    assert offsets == sorted(set(offsets))
    assert accounted(jb) == n and len(out) == jb.stats.released and jb.held == 0


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


#: one pushed packet: (ssrc, how its number is chosen, value)
MOVES = st.tuples(st.sampled_from([1, 1, 1, 2, 3]),
                  st.sampled_from(["next", "near", "far", "repeat_far_plus_one"]),
                  st.integers(-200, 65535))


def played(moves: list[tuple[int, str, int]], start: int) -> list[tuple[int, int]]:
    """(ssrc, sequence number) of each move: in order, near its source's last, far, or right after a far one."""
    last = {1: start, 2: start, 3: start}
    far_last = 0
    out = []
    for ssrc, how, value in moves:
        if how == "next":
            seq = last[ssrc] + 1
        elif how == "near":
            seq = last[ssrc] + value % 64 - 32
        elif how == "far":
            seq = far_last = value
        else:
            seq = far_last = far_last + 1
        last[ssrc] = seq
        out.append((ssrc, seq))
    return out


@settings(max_examples=300, deadline=None)
@given(moves=st.lists(MOVES, max_size=200), window=st.integers(1, 32), start=st.integers(0, 65535))
def test_every_packet_is_accounted_for_and_state_stays_bounded(moves: list[tuple[int, str, int]], window: int,
                                                               start: int) -> None:
    """Hostile input of any shape: in-order runs, reordering, far jumps, confirmed jumps, SSRC churn."""
    jb = JitterBuffer(window)
    out: list[RtpPacket] = []
    for ssrc, seq in played(moves, start):
        released = jb.push(pkt(seq, ssrc))
        out += released
        assert jb.held <= window + max(window, MIN_SEQUENTIAL) + 1  # bounded, whatever arrives
    out += jb.flush()
    assert accounted(jb) == len(moves) and len(out) == jb.stats.released and jb.held == 0
    assert len({id(p) for p in out}) == len(out)  # nothing released twice


@settings(max_examples=300, deadline=None)
@given(moves=st.lists(MOVES, max_size=200), window=st.integers(1, 32), start=st.integers(0, 65535))
def test_take_next_is_push_for_the_in_order_case(moves: list[tuple[int, str, int]], window: int, start: int) -> None:
    """The ingest's packet-free fast path (`take_next`, else `push`) releases the same packets in the
    same order with the same counts as `push` alone, on the same hostile input."""
    plain, fast = JitterBuffer(window), JitterBuffer(window)
    out_plain: list[tuple[int, int]] = []
    out_fast: list[tuple[int, int]] = []
    for ssrc, seq in played(moves, start):
        p = pkt(seq, ssrc)
        out_plain += [(q.ssrc, q.sequence) for q in plain.push(p)]
        if fast.take_next(ssrc, p.sequence):
            out_fast.append((ssrc, p.sequence))
        else:
            out_fast += [(q.ssrc, q.sequence) for q in fast.push(p)]
        assert plain.held == fast.held
    out_plain += [(q.ssrc, q.sequence) for q in plain.flush()]
    out_fast += [(q.ssrc, q.sequence) for q in fast.flush()]
    assert out_fast == out_plain and fast.stats == plain.stats


def test_in_order_stream_takes_the_fast_path_once_playing() -> None:
    jb = JitterBuffer(4)
    released = [p.sequence for i in range(MIN_SEQUENTIAL + 4) for p in jb.push(pkt(65530 + i))]
    assert released and jb.held == 0
    nxt = (65530 + MIN_SEQUENTIAL + 4) & 0xFFFF
    assert not jb.take_next(2, nxt)  # another source: push decides
    assert not jb.take_next(1, (nxt + 1) & 0xFFFF)  # not the next number: push decides
    assert all(jb.take_next(1, (nxt + i) & 0xFFFF) for i in range(20))  # across the 16-bit wrap
    assert jb.stats.released == len(released) + 20


@settings(max_examples=200, deadline=None)
@given(s1=st.integers(0, 65535), n1=st.integers(2, 40), n2=st.integers(2, 40),
       jump=st.integers(MAX_DROPOUT, 65536 - MAX_MISORDER - 1), window=st.integers(1, 16))
def test_rewind_or_large_jump_on_the_same_ssrc_resynchronises(s1: int, n1: int, n2: int, jump: int,
                                                               window: int) -> None:
    """A PBX restarting its stream (any rewind, or a jump past MAX_DROPOUT) costs nothing: the first
    packet of the new numbering waits for the second, then both and the rest play out. (A rewind by
    fewer than MAX_MISORDER + 2 packets is reordering to A.1: those packets are late until they pass
    the old numbering, at most MAX_MISORDER of them.)"""
    jb = JitterBuffer(window)
    first = [pkt(s1 + i) for i in range(n1)]
    s2 = s1 + n1 - 1 + jump
    second = [pkt(s2 + i) for i in range(n2)]
    out = []
    for p in first + second:
        out += jb.push(p)
    out += jb.flush()
    assert out == first + second
    assert jb.stats.resyncs == 1 and jb.stats.late == 0 and jb.stats.jumps == 0


@settings(max_examples=200, deadline=None)
@given(s1=st.integers(0, 65535), n=st.integers(2, 60), data=st.data())
def test_lone_jumping_packets_never_move_the_stream(s1: int, n: int, data: st.DataObject) -> None:
    jb = JitterBuffer(4)
    stream = [pkt(s1 + i) for i in range(n)]
    out = []
    hostile, prev = 0, -1
    for i, p in enumerate(stream):
        out += jb.push(p)
        if i >= 1 and data.draw(st.booleans()):
            # far from the stream, and never the successor of the previous hostile packet
            seq = (s1 + i + data.draw(st.integers(MAX_DROPOUT, 65536 - MAX_MISORDER - 3))) & 0xFFFF
            if seq == (prev + 1) & 0xFFFF:
                seq = (seq + 2) & 0xFFFF
            out += jb.push(pkt(seq))
            hostile, prev = hostile + 1, seq
    out += jb.flush()
    assert out == stream
    assert jb.stats.jumps == hostile and jb.stats.resyncs == 0


def test_wrap_and_loss_by_overflow() -> None:
    jb = JitterBuffer(4)
    out = []
    for seq in (65533, 65534, 65535, 1, 2, 3, 4, 5):  # 0 never arrives
        out += jb.push(pkt(seq))
    # 4 arriving 4 ahead of the missing 0 declares it lost; everything held then plays out
    assert [p.sequence for p in out] == [65533, 65534, 65535, 1, 2, 3, 4, 5]
    assert jb.stats.lost == 1 and jb.flush() == []


def test_forward_gap_is_counted_in_one_step() -> None:
    jb = JitterBuffer(8)
    out = jb.push(pkt(10)) + jb.push(pkt(11)) + jb.start_playout()
    out += jb.push(pkt(11 + MAX_DROPOUT - 1))  # the largest gap A.1 still calls a loss
    # all but the last window-1 missing numbers are declared lost at once; those may still come
    assert [p.sequence for p in out] == [10, 11] and jb.stats.lost == MAX_DROPOUT - 2 - 7 and jb.held == 1
    out += jb.flush()
    assert [p.sequence for p in out] == [10, 11, 11 + MAX_DROPOUT - 1]
    assert jb.stats.lost == MAX_DROPOUT - 2 and jb.held == 0


def test_ssrc_change_starts_a_new_substream_after_probation() -> None:
    jb = JitterBuffer(4)
    out = jb.push(pkt(100, ssrc=1)) + jb.push(pkt(101, ssrc=1)) + jb.start_playout() + jb.push(pkt(103, ssrc=1))
    out += jb.push(pkt(9, ssrc=3))  # a stray packet of another source: on probation, never played
    out += jb.push(pkt(104, ssrc=1))
    out += jb.push(pkt(7000, ssrc=2)) + jb.push(pkt(7001, ssrc=2)) + jb.start_playout()
    assert [(p.ssrc, p.sequence) for p in out] == [(1, 100), (1, 101), (1, 103), (1, 104), (2, 7000), (2, 7001)]
    assert jb.stats.ssrc_changes == 1 and jb.stats.lost == 1 and jb.stats.probation == 1
