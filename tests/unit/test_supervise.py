"""The supervisor and its backoff: restarts with growing, jittered, capped delays; down while waiting."""

from __future__ import annotations

import asyncio
import random

import pytest

from daemon.clock import FakeClock, SystemClock
from daemon.ops.metrics import Metrics
from daemon.ops.supervise import Backoff, Supervisor


def test_backoff_grows_is_capped_and_resets() -> None:
    b = Backoff(0.5, 4.0, jitter=0.0)
    assert [b.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    b.reset()
    assert b.next_delay() == 0.5


def test_backoff_jitter_stays_within_bounds_and_under_the_cap() -> None:
    b = Backoff(1.0, 8.0, jitter=0.2, rng=random.Random(7))
    delays = [b.next_delay() for _ in range(200)]
    assert all(0.8 <= d <= 8.0 for d in delays)
    assert len({round(d, 6) for d in delays[:3]}) == 3  # jittered, not lock-step
    with pytest.raises(ValueError):
        Backoff(0.0, 1.0)


async def test_a_crashing_task_is_logged_counted_restarted_and_shown_down(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    sup = Supervisor(clock=SystemClock(), metrics=metrics, initial_s=0.01, cap_s=0.05)
    crashes = 0
    healed = asyncio.Event()

    async def flaky() -> None:
        nonlocal crashes
        if crashes < 4:
            crashes += 1
            raise RuntimeError(f"boom {crashes}")
        healed.set()
        await asyncio.Event().wait()

    sup.spawn("flaky", flaky)
    async with asyncio.timeout(10):
        while not sup.down():  # noqa: ASYNC110 (polls supervisor state)
            await asyncio.sleep(0.001)
        seen_down = sup.down()
        await healed.wait()
    assert sup.down() == {} and sup.problem() is None
    assert "boom" in seen_down["flaky"]
    assert sup.tasks["flaky"].restarts == 4
    assert metrics.registry.get_sample_value("spoofwatch_task_restarts_total", {"task": "flaky"}) == 4
    assert metrics.registry.get_sample_value("spoofwatch_task_up", {"task": "flaky"}) == 1
    assert sum("task flaky failed" in r.getMessage() for r in caplog.records) == 4
    with pytest.raises(ValueError):
        sup.spawn("flaky", flaky)
    await sup.aclose()
    assert sup.snapshot()["flaky"]["state"] == "stopped"


async def test_a_task_that_returns_is_restarted_and_non_core_is_not_unhealthy() -> None:
    sup = Supervisor(clock=SystemClock(), initial_s=10.0, cap_s=10.0)
    ran = asyncio.Event()

    async def quits() -> None:
        ran.set()

    sup.spawn("status", quits, core=False)
    async with asyncio.timeout(5):
        await ran.wait()
        while sup.tasks["status"].state != "restarting":  # noqa: ASYNC110 (polls supervisor state)
            await asyncio.sleep(0.001)
    assert sup.tasks["status"].last_error == "exited"
    assert sup.down() == {} and "status" in sup.down(core_only=False)  # not core: still healthy
    await sup.aclose()


async def test_watched_probe_and_stable_run_resets_backoff() -> None:
    clock = FakeClock()
    sup = Supervisor(clock=clock)
    why: list[str | None] = [None]
    sup.watch("rtp", lambda: why[0])
    assert sup.problem() is None
    why[0] = "socket closed"
    assert sup.down() == {"rtp": "socket closed"} and "rtp down (socket closed)" in (sup.problem() or "")
    assert sup.snapshot()["rtp"]["state"] == "down"

    def broken() -> str | None:
        raise OSError("probe")

    sup.watch("other", broken, core=False)
    assert "probe failed" in sup.down(core_only=False)["other"]
    await sup.aclose()
