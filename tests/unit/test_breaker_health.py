"""The per-channel circuit breaker and the upstream health tracker, as state machines with explicit times."""

from __future__ import annotations

import pytest

from daemon.clock import FakeClock
from daemon.ops.metrics import Metrics
from daemon.upstream.channels import ChannelPool, CircuitBreaker
from daemon.upstream.health import UpstreamHealth

# circuit breaker ----------------------------------------------------------------------------------


def test_breaker_stays_closed_below_the_threshold() -> None:
    b = CircuitBreaker(failures=3, open_s=10)
    for t in (0.0, 1.0):
        assert b.allow(t)
        b.record_failure(t)
    assert b.state == "closed" and b.consecutive_failures == 2
    assert all(b.allow(2.0) for _ in range(5))  # closed: every stream is allowed


def test_success_resets_the_streak() -> None:
    b = CircuitBreaker(failures=3, open_s=10)
    b.record_failure(0)
    b.record_failure(1)
    b.record_success()
    b.record_failure(2)
    b.record_failure(3)
    assert b.state == "closed" and b.allow(3)
    b.record_failure(4)
    assert b.state == "open" and b.opened_at == 4


def test_open_refuses_until_open_s_then_exactly_one_trial() -> None:
    b = CircuitBreaker(failures=2, open_s=5)
    b.record_failure(100)
    b.record_failure(101)
    assert b.state == "open" and b.opened_at == 101
    assert not b.allow(101) and not b.allow(105.999)
    assert b.state == "open"
    assert b.allow(106)  # open_s elapsed: one trial
    assert b.state == "half_open"
    assert not b.allow(106) and not b.allow(107) and not b.allow(500)  # no second trial while one is out


def test_half_open_success_closes() -> None:
    b = CircuitBreaker(failures=1, open_s=5)
    b.record_failure(0)
    assert b.state == "open" and b.allow(5) and b.state == "half_open"
    b.record_success()
    assert b.state == "closed" and b.consecutive_failures == 0
    assert b.allow(5) and b.allow(5) and b.allow(5)
    b.record_failure(6)  # the threshold counts afresh after closing
    assert b.state == "open"


def test_half_open_failure_reopens_at_once_for_a_full_period() -> None:
    b = CircuitBreaker(failures=3, open_s=5)
    for t in (0, 0, 0):
        b.record_failure(t)
    assert b.allow(5) and b.state == "half_open"
    b.record_failure(7)  # one failure in half-open reopens (no need for 3 more)
    assert b.state == "open" and b.opened_at == 7
    assert not b.allow(11.9)
    assert b.allow(12) and b.state == "half_open" and not b.allow(12)
    b.record_success()
    assert b.state == "closed"


def test_open_breaker_does_not_extend_on_refused_allow_calls() -> None:
    b = CircuitBreaker(failures=1, open_s=5)
    b.record_failure(0)
    for t in range(5):
        assert not b.allow(float(t))
    assert b.allow(5.0)


async def test_pool_skips_open_channels_and_reports_the_gauge() -> None:
    clock = FakeClock(start=0.0)
    metrics = Metrics()
    pool = ChannelPool("127.0.0.1:9", tls=False, size=2, keepalive_s=20, max_streams_per_channel=10,
                       breaker_failures=1, breaker_open_s=5, clock=clock, metrics=metrics)
    try:
        a = pool.acquire()
        assert a is not None and a.index == 0
        pool.record_failure(a)
        pool.release(a)
        assert metrics.registry.get_sample_value("spoofwatch_upstream_breaker_open") == 1
        picks = [pool.acquire() for _ in range(3)]
        assert [p.index if p else None for p in picks] == [1, 1, 1]  # channel 0 is open
        for p in picks:
            assert p is not None
            pool.record_failure(p)
            pool.release(p)
        assert pool.acquire() is None  # both open
        assert metrics.registry.get_sample_value("spoofwatch_upstream_breaker_open") == 2
        clock.advance(5)
        trial = pool.acquire()
        assert trial is not None
        assert pool.acquire() is not None  # the other channel's trial
        assert pool.acquire() is None  # one trial per channel
        pool.record_success(trial)
        assert metrics.registry.get_sample_value("spoofwatch_upstream_breaker_open") == 0
        again = pool.acquire()
        assert again is not None and again.index == trial.index
    finally:
        await pool.close()  # never connected: nothing listens on the target


# upstream health ----------------------------------------------------------------------------------


def up(m: Metrics) -> float | None:
    return m.registry.get_sample_value("spoofwatch_upstream_up")


def test_health_starts_up() -> None:
    m = Metrics()
    h = UpstreamHealth(m)
    assert h.up and up(m) == 1


def test_degraded_after_three_consecutive_retries_then_recovered_at_next_streaming() -> None:
    m = Metrics()
    h = UpstreamHealth(m, failures_to_degrade=3)
    assert h.observe("retrying", 0) == []
    assert h.observe("retrying", 1) == []
    assert up(m) == 1
    changes = h.observe("retrying", 2)
    assert [(c.up, "3 consecutive" in c.detail) for c in changes] == [(False, True)]
    assert not h.up and up(m) == 0
    assert h.observe("retrying", 3) == []  # already degraded: no repeated change
    assert h.observe("idle", 4) == [] and h.observe("finished", 4) == []
    assert up(m) == 0
    changes = h.observe("streaming", 5)
    assert [c.up for c in changes] == [True] and h.up and up(m) == 1
    assert h.observe("streaming", 6) == []  # already up


def test_streaming_between_failures_resets_the_count() -> None:
    m = Metrics()
    h = UpstreamHealth(m, failures_to_degrade=3)
    for state in ("retrying", "retrying", "streaming", "retrying", "retrying", "streaming", "retrying"):
        assert h.observe(state, 0) == []
    assert h.up and up(m) == 1


def test_auth_failed_degrades_at_once() -> None:
    m = Metrics()
    h = UpstreamHealth(m)
    changes = h.observe("auth_failed", 0)
    assert len(changes) == 1 and not changes[0].up and "UNAUTHENTICATED" in changes[0].detail
    assert up(m) == 0
    assert h.observe("auth_failed", 1) == []  # once
    assert [c.up for c in h.observe("streaming", 2)] == [True] and up(m) == 1


@pytest.mark.parametrize("n", [1, 5])
def test_threshold_is_configurable(n: int) -> None:
    h = UpstreamHealth(None, failures_to_degrade=n)  # metrics are optional
    changes = [h.observe("retrying", float(t)) for t in range(n)]
    assert all(c == [] for c in changes[:-1]) and [c.up for c in changes[-1]] == [False]


async def test_pool_does_not_spend_the_trial_of_a_channel_it_does_not_pick() -> None:
    """A half-open channel that was asked but not picked must still get its trial later."""
    clock = FakeClock(start=0.0)
    pool = ChannelPool("127.0.0.1:9", tls=False, size=2, keepalive_s=20, max_streams_per_channel=10,
                       breaker_failures=1, breaker_open_s=5, clock=clock, metrics=Metrics())
    try:
        ch0, ch1 = pool.channels
        pool.record_failure(ch1)  # channel 1 opens
        clock.advance(5)  # ... and may be tried now
        first = pool.acquire()  # both idle: channel 0 (closed) is picked
        assert first is ch0
        second = pool.acquire()  # channel 0 is busier now: channel 1's trial
        assert second is ch1 and ch1.breaker.state == "half_open"
        assert pool.acquire() is ch0  # no second trial on channel 1
        pool.record_success(ch1)
        assert ch1.breaker.state == "closed"
    finally:
        await pool.close()


async def test_pool_prefers_channels_under_the_stream_cap() -> None:
    pool = ChannelPool("127.0.0.1:9", tls=False, size=2, keepalive_s=20, max_streams_per_channel=1,
                       breaker_failures=1, breaker_open_s=5, clock=FakeClock(), metrics=Metrics())
    try:
        picks = [pool.acquire() for _ in range(4)]
        assert [p.index if p else None for p in picks] == [0, 1, 0, 1]  # over the cap: least loaded still
        assert [c.active for c in pool.channels] == [2, 2] and [c.opened_streams for c in pool.channels] == [2, 2]
        for p in picks:
            assert p is not None
            pool.release(p)
        assert [c.active for c in pool.channels] == [0, 0]
    finally:
        await pool.close()
