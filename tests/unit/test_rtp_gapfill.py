"""Gap fill held to the wall clock (sans-I/O, times passed in): real loss is filled in full,
timestamp jumps beyond the time that passed are refused and counted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pytest import approx

from daemon.ingest.rtp.gapfill import GAP_FILL_SLACK_S, GapFillBudget


def test_real_loss_at_real_time_is_filled_in_full() -> None:
    b = GapFillBudget()
    b.begin(100.0)
    t = 100.0
    for i in range(1, 500):  # 20 ms packets, every 7th lost: the next one arrives 40 ms after
        lost = i % 7 == 0
        t += 0.040 if lost else 0.020
        if lost:
            assert b.fill(0.020, t, next_audio_s=0.020) == 0.020
        b.audio(0.020)
    assert b.refused_s == 0 and abs(b.filled_s - 71 * 0.020) < 1e-9


def test_jumping_timestamps_get_no_more_than_the_wall_clock() -> None:
    b = GapFillBudget()
    b.begin(0.0)
    b.audio(0.02)
    assert b.fill(1.5, 0.02, 0.02) == approx(GAP_FILL_SLACK_S - 0.02)  # the slack, less the packet that came
    b.audio(0.02)
    assert b.fill(1.5, 0.04, 0.02) == approx(0.0)  # nothing: 20 ms passed, 20 ms of audio came
    b.audio(0.02)
    assert b.fill(1.5, 1.04, 0.02) == approx(1.0 - 0.02)  # a second later: the second that passed, less the audio
    assert b.refused_s == approx(4.5 - b.filled_s)


def test_no_gap_no_fill() -> None:
    b = GapFillBudget()
    assert b.fill(0.0, 5.0) == 0.0 and b.fill(-1.0, 5.0) == 0.0 and b.refused_s == 0


EVENTS = st.lists(st.tuples(st.floats(0, 0.5), st.floats(0, 0.1), st.floats(0, 2.0)), max_size=100)


@given(events=EVENTS)
def test_silence_never_runs_ahead_of_the_wall_clock(events: list[tuple[float, float, float]]) -> None:
    """Any arrivals (time step, audio, claimed gap): the silence filled never exceeds the time that
    passed plus the slack, and every claimed second is either filled or counted as refused."""
    b = GapFillBudget()
    now = 10.0
    b.begin(now)
    claimed = 0.0
    for dt, audio_s, gap in events:
        now += dt
        claimed += gap
        b.fill(gap, now, audio_s)
        b.audio(audio_s)
        assert b.filled_s <= (now - 10.0) + GAP_FILL_SLACK_S + 1e-9
    assert abs(b.filled_s + b.refused_s - claimed) < 1e-6
