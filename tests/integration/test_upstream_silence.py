"""Silence is not a stall. A leg that is silent for longer than stall_timeout_s (a caller on hold, an agent
listening) gets no results from the upstream, and that must not reopen its stream, count STALLED or
degrade upstream health; voiced audio that gets no result, though, is a stall. Real simulator on port 0,
real LegStream; the tests wait on the stall watch's own progress (how many windows it looked and found
nothing owed), never on fixed sleeps."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import numpy as np
import pytest

from daemon.config import PolicyConfig
from daemon.model import LegRef
from daemon.policy.verdict import LegVerdictPolicy
from daemon.upstream.simulator import SimulatorServer
from tests.integration.test_upstream_resilience import FAST, Leg, marked, until


def line_silence(n: int, seed: int = 7) -> list[bytes]:
    """n chunks of 250 ms of line noise near -70 dBFS: what a silent leg really carries."""
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, 10, 4000)).astype("<i2").tobytes() for _ in range(n)]


async def silent_windows(leg: Leg, windows: int, *, pace_s: float = 0.02, max_chunks: int = 5000) -> int:
    """Stream line silence until the stall watch woke `windows` more times with nothing owed (so the silence
    lasted at least windows - 1 stall timeouts); returns how many chunks were sent."""
    start = leg.stream.stall.checks
    sent = 0
    for chunk in line_silence(max_chunks):
        if leg.stream.stall.checks >= start + windows:
            return sent
        leg.stream.send_chunk(chunk, 0.0)
        sent += 1
        await asyncio.sleep(pace_s)
    raise AssertionError(f"the stall watch did not look {windows} times in {max_chunks} chunks")


async def test_silence_longer_than_the_stall_timeout_then_speech(sim: SimulatorServer) -> None:
    leg = Leg(sim, upstream=dataclasses.replace(FAST, stall_timeout_s=1.0))
    policy = LegVerdictPolicy(PolicyConfig(), LegRef("call-9", "inbound"))
    alerts = []
    leg.stream.start()
    await until(lambda: sim.streams_opened == 1)
    silent = await silent_windows(leg, 4)  # ≥ 3 stall timeouts of a silent leg, on a live stream
    assert leg.stream.stall.voiced_chunks == 0 and leg.stream.stall.silent_chunks == silent
    assert leg.results == [] and leg.stream.state == "streaming"
    speech = marked(32)  # 8 s of the marked (spoofed) clip
    for c in speech:
        leg.stream.send_chunk(c, 0.0)
        await asyncio.sleep(0.005)
    await until(lambda: len(leg.results) >= 4)
    await leg.stream.finish(10)
    await leg.close()
    for r in leg.results:
        alerts += policy.observe(r)

    assert sim.streams_opened == 1 and leg.value("spoofwatch_upstream_reconnects_total") == 0
    assert leg.value("spoofwatch_upstream_errors_total", {"code": "STALLED"}) == 0
    assert leg.states == ["streaming", "finished"] and leg.health_changes() == []  # no upstream.degraded
    silence_s = silent * 0.25
    # results lie in the speech (the simulator's 20 ms frame grid may start one a frame early)
    odd = [r for r in leg.results if r.label != "spoofed" or r.start_s < silence_s - 0.02 - 1e-6]
    assert leg.results and not odd, (silence_s, odd)
    assert len(alerts) == 1  # the call's spoof alert


async def test_voiced_audio_without_results_is_a_stall(sim: SimulatorServer,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    leg = Leg(sim, upstream=dataclasses.replace(FAST, stall_timeout_s=0.5))
    sim.set_faults(drop_results_ratio=1.0)  # the upstream takes the audio and never answers
    leg.stream.start()
    with caplog.at_level(logging.WARNING, logger="spoofwatch.upstream"):
        for c in marked(400):
            if leg.value("spoofwatch_upstream_errors_total", {"code": "STALLED"}) >= 1:
                break
            leg.stream.send_chunk(c, 0.0)
            await asyncio.sleep(0.02)
        await until(lambda: leg.value("spoofwatch_upstream_errors_total", {"code": "STALLED"}) >= 1)
        await until(lambda: sim.streams_opened >= 2)  # reopened
        await leg.stream.aclose()
    await leg.close()
    assert leg.value("spoofwatch_upstream_reconnects_total") >= 1 and "retrying" in leg.states
    assert leg.value("spoofwatch_upstream_replayed_chunks_total") >= 1
    assert any("voiced audio" in r.getMessage() for r in caplog.records if r.name == "spoofwatch.upstream")
    assert leg.results == []


async def test_a_silent_leg_whose_results_are_all_dropped_is_not_stalled(sim: SimulatorServer) -> None:
    """The same fault as above, but the leg is silent: nothing was owed, so nothing is wrong."""
    leg = Leg(sim, upstream=dataclasses.replace(FAST, stall_timeout_s=0.3))
    sim.set_faults(drop_results_ratio=1.0)
    leg.stream.start()
    await until(lambda: sim.streams_opened == 1)
    await silent_windows(leg, 5)
    await leg.stream.finish(5)
    await leg.close()
    assert sim.streams_opened == 1 and leg.value("spoofwatch_upstream_errors_total", {"code": "STALLED"}) == 0
    assert leg.states == ["streaming", "finished"] and leg.health_changes() == []
