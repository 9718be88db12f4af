"""RFC 3261 server transaction timers with a fake clock: the INVITE's 200 is retransmitted at T1, 2·T1,
4·T1… (capped at T2) until the ACK; Timer H (64·T1) gives up; non-INVITE responses are replayed."""

from __future__ import annotations

import itertools

from daemon.ingest.siprec.transaction import FinalResponseTimer, ResponseCache, Tick


def retransmission_times(timer: FinalResponseTimer, until: float, step: float = 0.01) -> tuple[list[float], float]:
    times: list[float] = []
    t = timer.started_at
    for _ in range(int((until - t) / step) + 2):
        t = round(t + step, 6)
        tick = timer.poll(t)
        if tick is Tick.RETRANSMIT:
            times.append(round(t - timer.started_at, 2))
        elif tick is Tick.TIMEOUT:
            return times, round(t - timer.started_at, 2)
    return times, -1.0


def test_udp_200_retransmits_doubling_to_t2_then_timer_h() -> None:
    times, timeout = retransmission_times(FinalResponseTimer(100.0, reliable=False), 140.0)
    # intervals 0.5, 1, 2, 4, 4, 4… → at 0.5, 1.5, 3.5, 7.5, 11.5, … up to 32 s (64·T1)
    assert times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert all(b - a == 4.0 for a, b in itertools.pairwise(times[3:]))
    assert times[-1] < 32.0 and timeout == 32.0


def test_tcp_200_is_not_retransmitted_but_timer_h_still_applies() -> None:
    timer = FinalResponseTimer(0.0, reliable=True)
    assert timer.deadline() == 32.0
    times, timeout = retransmission_times(timer, 40.0)
    assert times == [] and timeout == 32.0


def test_a_late_poll_sends_one_retransmission_not_a_burst() -> None:
    timer = FinalResponseTimer(0.0, reliable=False, t1=0.1)
    assert timer.poll(3.0) is Tick.RETRANSMIT
    assert timer.poll(3.0) is Tick.WAIT
    assert timer.deadline() > 3.0


def test_response_cache_replays_until_timer_j_and_is_bounded() -> None:
    cache = ResponseCache(t1=0.5, max_entries=3)
    cache.put("b1", "BYE", b"200", now=0.0, reliable=False)
    cache.put("b2", "BYE", b"200", now=0.0, reliable=True)  # TCP: nothing kept
    assert cache.get("b1", "BYE") == b"200" and cache.get("b2", "BYE") is None
    cache.expire(31.9)
    assert cache.get("b1", "BYE") == b"200"
    cache.expire(32.0)
    assert cache.get("b1", "BYE") is None
    for i in range(10):
        cache.put(f"x{i}", "OPTIONS", b"200", now=100.0, reliable=False)
    assert len(cache.entries) == 3 and cache.get("x9", "OPTIONS") == b"200"
