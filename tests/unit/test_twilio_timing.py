"""MediaTiming (sans-I/O, time injected): whatever a sender stamps, silence filled for gaps never
exceeds the cap nor the wall-clock time that passed, and what is not filled is labelled."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from daemon.ingest.twilio.timing import Backwards, Gap, Lag, MediaTiming

FRAME = 160  # 20 ms of μ-law


@given(st.lists(st.tuples(st.integers(min_value=-2000, max_value=10_000),
                          st.floats(min_value=0.0, max_value=3.0, allow_nan=False)), min_size=1, max_size=200),
       st.floats(min_value=0.0, max_value=5.0, allow_nan=False))
def test_fill_is_bounded_by_cap_and_wall_clock(steps: list[tuple[int, float]], cap_s: float) -> None:
    timing = MediaTiming(gap_fill_max_s=cap_s, lag_threshold_s=0.25)
    ts, now, start = 0, 500.0, 500.0
    assert timing.observe("inbound", ts, FRAME, now) is None  # the first frame sets the reference
    filled = 0.0
    for dts, dnow in steps:
        ts, now = max(0, ts + dts), now + dnow
        ev = timing.observe("inbound", ts, FRAME, now)
        if isinstance(ev, Gap):
            assert 0.0 <= ev.fill_seconds <= min(ev.seconds, cap_s)
            assert ev.fill_seconds <= max(0.0, dnow - FRAME / 8000) + 1e-9
            if ev.fill_seconds < ev.seconds - 1e-6:
                assert ev.unfilled_reason in ("gap_unfilled", "gap_beyond_wall_clock")
            else:
                assert ev.unfilled_reason == ""
            filled += ev.fill_seconds
        else:
            assert ev is None or isinstance(ev, Lag | Backwards)
    assert filled <= (now - start) + 1e-6


def test_tracks_are_timed_apart() -> None:
    timing = MediaTiming(gap_fill_max_s=2.0, lag_threshold_s=0.25)
    assert timing.observe("inbound", 0, FRAME, 0.0) is None
    assert timing.observe("outbound", 5000, FRAME, 0.0) is None  # another track's first frame: no gap
    assert timing.observe("inbound", 20, FRAME, 0.02) is None
    assert timing.observe("inbound", 0, FRAME, 0.04) == Backwards(20)
