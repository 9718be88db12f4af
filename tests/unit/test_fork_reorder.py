"""ReorderBuffer: order restored for any reordering within the window; late, duplicates, losses counted."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.ingest.forks.reorder import ReorderBuffer


def run(buf: ReorderBuffer[int], seqs: list[int]) -> list[int]:
    out = []
    for s in seqs:
        out += [r.seq for r in buf.push(s, s)]
    return out + [r.seq for r in buf.flush()]


@settings(max_examples=300, deadline=None)
@given(window=st.integers(min_value=1, max_value=12), start=st.integers(min_value=0, max_value=10**6),
       n=st.integers(min_value=0, max_value=120), block=st.integers(min_value=1, max_value=12), seed=st.integers())
def test_any_permutation_within_the_window_is_restored(window: int, start: int, n: int, block: int,
                                                       seed: int) -> None:
    block = min(block, window)
    seqs = list(range(start, start + n))
    rng = random.Random(seed)
    shuffled: list[int] = []
    for i in range(0, n, block):
        part = seqs[i:i + block]
        rng.shuffle(part)
        shuffled += part
    buf: ReorderBuffer[int] = ReorderBuffer(window)
    assert run(buf, shuffled) == seqs
    assert (buf.stats.lost, buf.stats.late, buf.stats.duplicates) == (0, 0, 0)
    assert buf.stats.released == n and buf.held == 0


def test_in_order_is_released_immediately_after_the_start_window() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(3)
    assert buf.push(1, 1) == [] and buf.push(2, 2) == []
    assert [r.seq for r in buf.push(3, 3)] == [1, 2, 3]
    assert [r.seq for r in buf.push(4, 4)] == [4]


def test_late_duplicate_and_lost() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(2)
    run_out = [r.seq for s in (1, 2, 3) for r in buf.push(s, s)]
    assert run_out == [1, 2, 3]
    assert buf.push(2, 2) == [] and buf.stats.duplicates == 1
    assert buf.push(5, 5) == []  # 4 missing: wait
    released = buf.push(6, 6)  # window full: 4 declared lost
    assert [(r.seq, r.skipped_before) for r in released] == [(5, 1), (6, 0)]
    assert buf.stats.lost == 1
    assert buf.push(4, 4) == [] and buf.stats.late == 1
    buf.push(6, 6)
    assert buf.stats.duplicates == 2


def test_flush_releases_a_short_stream_in_order() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(8)
    for s in (12, 10, 11):
        assert buf.push(s, s) == []
    assert [r.seq for r in buf.flush()] == [10, 11, 12]


def test_a_renumbered_stream_restarts_instead_of_dropping_everything() -> None:
    buf: ReorderBuffer[int] = ReorderBuffer(2)
    assert run_seqs(buf, [100, 101, 102]) == [100, 101, 102]
    out = run_seqs(buf, [1, 2, 3, 4, 5])  # renumbered from 1: the first `window` count as late
    assert buf.stats.late == 2 and buf.stats.restarts == 1
    assert out + [r.seq for r in buf.flush()] == [3, 4, 5]


def run_seqs(buf: ReorderBuffer[int], seqs: list[int]) -> list[int]:
    return [r.seq for s in seqs for r in buf.push(s, s)]
