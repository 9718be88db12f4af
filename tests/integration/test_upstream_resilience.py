"""LegStream when upstream misbehaves, against the real grpc.aio simulator's fault injection:
UNAVAILABLE and connection resets mid-call (reconnect, replay in order, never a chunk twice on one stream,
results in call time), an outage of new streams (retrying, health degraded then recovered), a refused
API key (no retry storm, loud error, audio counted as dropped), and stalls (no result owed for voiced
audio) versus legs that are merely idle (see also test_upstream_silence.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from daemon.clock import SystemClock
from daemon.config import UpstreamConfig, UpstreamCredentials
from daemon.model import DeepfakeResult, LegRef
from daemon.ops.metrics import Metrics
from daemon.upstream.channels import ChannelPool
from daemon.upstream.health import UpstreamHealth
from daemon.upstream.simulator import SimulatorServer
from daemon.upstream.stream import LegStream
from tests.conftest import CLIPS, TEST_API_KEY, TEST_CID, read_wav

FAST = dataclasses.replace(UpstreamConfig(), retry_initial_ms=20, retry_max_ms=200)
CHUNK_S = 0.25


@pytest.fixture(autouse=True)
def keep_records(sim: SimulatorServer) -> None:
    """These tests inspect what each finished stream received: ask the simulator to keep it."""
    sim.keep_records = True


def marked(n: int) -> list[bytes]:
    """n distinct 250 ms chunks of the marked clip (tiled); the first sample of each carries its index."""
    pcm, _ = read_wav(CLIPS / "speech_marked_16k.wav")
    tiled = np.tile(pcm, n * 4000 // len(pcm) + 1)[: n * 4000].copy()
    tiled[::4000] = np.arange(n, dtype=np.int16)
    raw = tiled.astype("<i2").tobytes()
    return [raw[i * 8000:(i + 1) * 8000] for i in range(n)]


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


class Leg:
    """One LegStream on its own pool, with what it reported."""

    def __init__(self, sim: SimulatorServer, *, upstream: UpstreamConfig = FAST, key: str = TEST_API_KEY,
                 replay_chunks: int = 64, breaker_failures: int = 5, breaker_open_s: float = 0.3) -> None:
        self.metrics = Metrics()
        self.health = UpstreamHealth(self.metrics)
        self.results: list[DeepfakeResult] = []
        self.states: list[str] = []
        self.events: list[tuple[str, Any]] = []  # states, health changes and test markers, in order
        self.pool = ChannelPool(sim.target, tls=False, size=1, keepalive_s=20, max_streams_per_channel=100,
                                breaker_failures=breaker_failures, breaker_open_s=breaker_open_s,
                                clock=SystemClock(), metrics=self.metrics)
        self.stream = LegStream(self.pool, UpstreamCredentials(TEST_CID, key), LegRef("call-9", "inbound"),
                                upstream=upstream, queue_chunks=200, replay_chunks=replay_chunks,
                                metrics=self.metrics, clock=SystemClock(), on_result=self.results.append,
                                on_state=self._on_state)

    def _on_state(self, _s: LegStream, state: str) -> None:
        self.states.append(state)
        self.events.append(("state", state))
        for change in self.health.observe(state, 0.0):
            self.events.append(("health", change.up))

    def mark(self, what: str) -> None:
        self.events.append(("mark", what))

    def health_changes(self) -> list[bool]:
        return [v for k, v in self.events if k == "health"]

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        return sample(self.metrics, name, labels)

    async def close(self) -> None:
        await self.stream.aclose()
        await self.pool.close()


async def until(cond: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 (polls metrics and simulator state, no event to await)
            await asyncio.sleep(0.01)


def check_replay(sim: SimulatorServer, chunks: list[bytes], results: list[DeepfakeResult]) -> list[list[int]]:
    """Every server stream got a contiguous, in-order run of the leg's chunks (so never one twice), every
    chunk reached some stream, and each stream's results lie within its own span of call time."""
    index = {c: i for i, c in enumerate(chunks)}
    runs: list[list[int]] = []
    for pid in sorted(sim.streams):  # pids count up in opening order
        run = [index[c] for c in sim.streams[pid].chunks]
        assert len(run) == len(set(run)), f"stream {pid} got a chunk twice"
        assert run == list(range(run[0], run[0] + len(run))), f"stream {pid}: not a contiguous in-order run"
        runs.append(run)
        for r in results:
            if r.pid == pid:  # results are moved to call time by the stream's first chunk
                assert run[0] * CHUNK_S - 1e-6 <= r.start_s <= r.end_s <= (run[-1] + 1) * CHUNK_S + 0.02
    covered = sorted({i for run in runs for i in run})
    assert covered == list(range(len(chunks))), "some chunk never reached upstream"
    return runs


async def send_and_heal(leg: Leg, chunks: list[bytes], *, pause_s: float, heal_after_reconnects: int,
                        heal: Callable[[], None]) -> bool:
    """Send `chunks` one by one, `pause_s` apart; once the leg has reconnected that often, `heal()` the
    upstream (once). Returns whether it healed."""
    healed = False
    for c in chunks:
        leg.stream.send_chunk(c, 0.0)
        await asyncio.sleep(pause_s)
        if not healed and leg.value("spoofwatch_upstream_reconnects_total") >= heal_after_reconnects:
            heal()
            healed = True
    return healed


# (a) + (e): the stream breaks mid-call ----------------------------------------------------------

@pytest.mark.parametrize("fault", ["unavailable_after_s", "close_connection_after_s"])
async def test_stream_broken_mid_call_is_reopened_with_replay(sim: SimulatorServer, fault: str) -> None:
    leg = Leg(sim)
    chunks = marked(100)  # 25 s of call audio, sent in ~2 s
    sim.set_faults(**{fault: 0.6})
    leg.stream.start()
    # upstream heals after the first reconnect
    healed = await send_and_heal(leg, chunks, pause_s=0.02, heal_after_reconnects=1,
                                 heal=lambda: sim.set_faults(**{fault: 0.0}))
    await leg.stream.finish(10)
    await leg.close()

    assert healed and len(sim.streams) >= 2
    runs = check_replay(sim, chunks, leg.results)
    first_span_end = len(runs[0]) * CHUNK_S
    later = [r for r in leg.results if r.pid != min(sim.streams)]
    assert later and max(r.end_s for r in later) > first_span_end  # results after the reconnect, in call time
    assert max(r.end_s for r in leg.results) > 20.0
    assert all(r.label == "spoofed" for r in leg.results)
    assert leg.value("spoofwatch_upstream_reconnects_total") >= 1
    assert leg.value("spoofwatch_upstream_replayed_chunks_total") >= 1
    assert leg.value("spoofwatch_upstream_errors_total", {"code": "UNAVAILABLE"}) >= 1
    assert "retrying" in leg.states and leg.states[-1] == "finished"
    assert leg.stream.pids == sorted(leg.stream.pids) and len(leg.stream.pids) >= 2
    assert leg.value("spoofwatch_drops_total", {"ingest": "upstream", "reason": "queue_full"}) == 0


async def test_streams_broken_while_writing_a_backlog_lose_no_chunk(sim: SimulatorServer) -> None:
    """Breaks that hit while the writer is pushing many queued chunks at once (a backlog after a
    reconnect): a chunk whose write failed must go to the next stream, not vanish."""
    leg = Leg(sim)
    chunks = marked(160)
    sim.set_faults(unavailable_after_s=0.02)
    leg.stream.start()
    for c in chunks[:40]:  # a backlog: all of it is queued before the first stream opens
        leg.stream.send_chunk(c, 0.0)
    healed = await send_and_heal(leg, chunks[40:], pause_s=0.005, heal_after_reconnects=4,
                                 heal=lambda: sim.set_faults(unavailable_after_s=0.0))
    await leg.stream.finish(10)
    await leg.close()
    assert healed and len(sim.streams) >= 4
    check_replay(sim, chunks, leg.results)
    assert leg.results and max(r.end_s for r in leg.results) > 35.0


# (b): no new streams for a while ----------------------------------------------------------------

async def test_outage_retries_then_recovers_and_health_follows(sim: SimulatorServer) -> None:
    leg = Leg(sim, breaker_failures=3, breaker_open_s=0.3)
    chunks = marked(400)
    sent = 0

    async def feeder() -> None:
        nonlocal sent
        for c in chunks:
            leg.stream.send_chunk(c, 0.0)
            sent += 1
            await asyncio.sleep(0.02)

    sim.set_faults(unavailable_after_s=0.5)
    leg.stream.start()
    feeding = asyncio.create_task(feeder())
    try:
        await until(lambda: leg.results)  # served at first
        await until(lambda: leg.value("spoofwatch_upstream_reconnects_total") >= 1)
        sim.set_faults(refuse_new_streams=True)
        leg.mark("outage")
        opened = sim.streams_opened
        await until(lambda: not leg.health.up)
        retries = leg.states.count("retrying")
        await until(lambda: leg.states.count("retrying") >= retries + 6)  # it keeps trying (the breaker too)
        assert leg.stream.state == "retrying" and sim.streams_opened <= opened + 1
        results_in_outage = len(leg.results)
        sim.set_faults(refuse_new_streams=False, unavailable_after_s=0.0)
        leg.mark("lifted")
        await until(lambda: len(leg.results) > results_in_outage + 2 and leg.health.up)
    finally:
        feeding.cancel()
        await asyncio.gather(feeding, return_exceptions=True)
    await leg.stream.finish(10)
    await leg.close()

    assert leg.health_changes() == [False, True]  # degraded once, recovered once: no flapping in the outage
    i_outage, i_lifted = leg.events.index(("mark", "outage")), leg.events.index(("mark", "lifted"))
    i_down, i_up = leg.events.index(("health", False)), leg.events.index(("health", True))
    assert i_outage < i_down < i_lifted < i_up
    assert ("state", "streaming") not in leg.events[i_down:i_lifted]  # a refused stream is not "streaming"
    assert leg.value("spoofwatch_upstream_up") == 1
    failures = sum(leg.value("spoofwatch_upstream_errors_total", {"code": c}) for c in ("UNAVAILABLE", "INTERNAL"))
    assert failures >= 3  # INTERNAL: grpc.aio may report a write racing the refusal so (grpc/grpc#36066)
    assert leg.stream.state == "finished"
    # audio of the outage was queued, not lost: results cover call time after the outage
    assert max(r.end_s for r in leg.results) > sent * CHUNK_S - 5.0
    index = {c: i for i, c in enumerate(chunks)}
    for rec in sim.streams.values():
        run = [index[c] for c in rec.chunks]
        assert run == list(range(run[0], run[0] + len(run))) if run else True


# (c): the API key is refused ----------------------------------------------------------------------

async def test_wrong_api_key_fails_loudly_once(sim: SimulatorServer, caplog: pytest.LogCaptureFixture) -> None:
    leg = Leg(sim, key="not-the-key")
    chunks = marked(48)
    leg.stream.start()
    with caplog.at_level(logging.WARNING, logger="spoofwatch.upstream"):
        for c in chunks[:4]:
            leg.stream.send_chunk(c, 0.0)
            await asyncio.sleep(0.05)
        await until(lambda: leg.stream.state == "auth_failed", timeout=5)
        # A write racing the server's refusal can end the call as INTERNAL "Internal error from Core" (gRPC
        # core's own status, grpc/grpc#36066: the client cannot see the real one); that stream is retried
        # like any other failure, and the next one sees UNAUTHENTICATED. Only those retries are allowed.
        internal = leg.value("spoofwatch_upstream_errors_total", {"code": "INTERNAL"})
        assert sim.streams_opened == 1 + internal
        failed_drops = leg.value("spoofwatch_drops_total", {"ingest": "upstream", "reason": "upstream_failed"})
        for c in chunks[4:]:  # 2 s more of call audio
            leg.stream.send_chunk(c, 0.0)
            await asyncio.sleep(0.05)
        await leg.stream.finish(2)
    await leg.close()

    assert internal <= 2 and sim.streams_opened == 1 + internal  # no retry storm
    rec = next(iter(sim.streams.values()))
    assert rec.status_code is not None and rec.status_code.name == "UNAUTHENTICATED"
    assert leg.stream.state == "auth_failed" and not leg.stream.analysed and leg.results == []
    assert "UNAUTHENTICATED" in leg.stream.last_error
    assert leg.states.count("auth_failed") == 1 and leg.states.count("retrying") == internal
    drops = leg.value("spoofwatch_drops_total", {"ingest": "upstream", "reason": "upstream_failed"})
    assert drops == failed_drops + len(chunks) - 4  # every later chunk is counted as dropped
    replayed = leg.value("spoofwatch_upstream_replayed_chunks_total")
    assert leg.stream.chunks_sent - replayed + drops == len(chunks)  # every chunk is either written or counted
    assert leg.value("spoofwatch_upstream_errors_total", {"code": "UNAUTHENTICATED"}) == 1
    assert leg.value("spoofwatch_upstream_reconnects_total") == internal
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "spoofwatch.upstream"]
    assert len(errors) == 1 and "UNAUTHENTICATED" in errors[0].getMessage()
    assert "NOT analysed" in errors[0].getMessage() and getattr(errors[0], "call_id", None) == "call-9"
    assert leg.health_changes() == [False]  # health degrades at once


# (d): stalls --------------------------------------------------------------------------------------

async def test_stalled_stream_is_reopened(sim: SimulatorServer) -> None:
    """The server takes the (voiced) audio but holds every result back: a result is owed and none comes."""
    leg = Leg(sim, upstream=dataclasses.replace(FAST, stall_timeout_s=0.5))
    chunks = marked(160)
    sim.set_faults(result_latency_ms=600_000)
    leg.stream.start()
    healed = await send_and_heal(leg, chunks, pause_s=0.01, heal_after_reconnects=1,
                                 heal=lambda: sim.set_faults(result_latency_ms=0))
    await leg.stream.finish(10)
    await leg.close()

    assert healed
    assert leg.value("spoofwatch_upstream_errors_total", {"code": "STALLED"}) >= 1
    assert leg.value("spoofwatch_upstream_replayed_chunks_total") >= 1
    first = sim.streams[min(sim.streams)]
    assert first.results_sent == 0 and len(sim.streams) >= 2
    assert leg.results and min(r.pid for r in leg.results) != first.pid
    check_replay(sim, chunks, leg.results)


def voiced(n: int) -> list[bytes]:
    """n distinct 250 ms chunks in which every 20 ms frame is voiced: the simulator answers exactly every
    8 chunks (2 s), at the chunk's last frame, so nothing written stays unanswered after a result."""
    t = np.arange(n * 4000) / 16000
    x = (3000 * np.sin(2 * np.pi * 440 * t) + 2000 * np.sin(2 * np.pi * 3000 * t)).astype(np.int16)
    x[::4000] = np.arange(n, dtype=np.int16)
    raw = x.astype("<i2").tobytes()
    return [raw[i * 8000:(i + 1) * 8000] for i in range(n)]


async def idle_windows(leg: Leg, windows: int) -> None:
    """Wait until the stall watch woke `windows` more times and found nothing owed (each wake-up ends
    one stall window, so at least windows - 1 stall timeouts passed)."""
    start = leg.stream.stall.checks
    await until(lambda: leg.stream.stall.checks >= start + windows,
                timeout=10 + 2 * windows * leg.stream.cfg.stall_timeout_s)


async def test_idle_leg_longer_than_the_stall_timeout_is_not_broken(sim: SimulatorServer) -> None:
    """No audio at all for a while (a call set up before its media arrives, or a pause after audio that
    was answered) is not a stall: the stream must stay up and analyse the audio that follows."""
    leg = Leg(sim, upstream=dataclasses.replace(FAST, stall_timeout_s=1.0))
    chunks = voiced(32)
    leg.stream.start()
    await until(lambda: sim.streams_opened == 1)
    await idle_windows(leg, 3)  # ≥ 2 stall timeouts before any audio
    for c in chunks[:16]:
        leg.stream.send_chunk(c, 0.0)
        await asyncio.sleep(0.005)
    await until(lambda: len(leg.results) >= 2)  # 4 s answered: nothing pending
    await idle_windows(leg, 3)  # idle again
    for c in chunks[16:]:
        leg.stream.send_chunk(c, 0.0)
        await asyncio.sleep(0.005)
    async with asyncio.timeout(10):
        await leg.stream.finish(5)
    await leg.close()
    assert leg.stream.state == "finished" and leg.states == ["streaming", "finished"]
    assert sim.streams_opened == 1 and leg.value("spoofwatch_upstream_reconnects_total") == 0
    (rec,) = sim.streams.values()
    assert rec.chunks == chunks and rec.status_code is not None and rec.status_code.name == "OK"
    segments = [(r.start_s, r.end_s) for r in leg.results if r.level.value == "segment"]
    assert segments == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 8.0)]


async def test_latency_exemplars_name_the_call(sim: SimulatorServer) -> None:
    """Call ids never become labels; slow chunks and every result carry them as OpenMetrics exemplars."""
    from prometheus_client.openmetrics import exposition as openmetrics

    leg = Leg(sim)
    leg.stream.start()
    for c in marked(20):
        leg.stream.send_chunk(c, 0.0)  # "received" at time 0: every chunk is late, so each gets an exemplar
        await asyncio.sleep(0.01)
    await leg.stream.finish(10)
    await leg.close()
    text = openmetrics.generate_latest(leg.metrics.registry).decode()  # type: ignore[no-untyped-call]

    def exemplar_lines(metric: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith(f"{metric}_bucket") and " # {" in line]

    for metric in ("spoofwatch_chunk_latency_seconds", "spoofwatch_result_latency_seconds"):
        lines = exemplar_lines(metric)
        assert lines, metric
        assert all('call_id="call-9",leg="inbound"' in line for line in lines), lines
