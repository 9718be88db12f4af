"""LegStream and ChannelPool against the real simulator: one stream per leg, results mapped to call
time, several legs over distinct connections, and replay after UNAVAILABLE: in order, nothing lost
that was buffered, never a chunk twice on one stream."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import numpy as np
import pytest

from daemon.clock import SystemClock
from daemon.config import SimulatorConfig, UpstreamConfig, UpstreamCredentials
from daemon.model import DeepfakeResult, LegRef, Level
from daemon.ops.metrics import Metrics
from daemon.upstream.channels import ChannelPool
from daemon.upstream.simulator import SimulatorServer
from daemon.upstream.stream import LegStream
from tests.conftest import CLIPS, TEST_API_KEY, TEST_CID, read_wav

FAST = dataclasses.replace(UpstreamConfig(), retry_initial_ms=20, retry_max_ms=100)


def unique_chunks(n: int) -> list[bytes]:
    """n distinct 250 ms chunks of the marked clip (the first sample carries the chunk index)."""
    pcm, _ = read_wav(CLIPS / "speech_marked_16k.wav")
    tiled = np.tile(pcm, n // 32 + 1)[: n * 4000].copy()
    tiled[::4000] = np.arange(n, dtype=np.int16)
    raw = tiled.astype("<i2").tobytes()
    return [raw[i * 8000:(i + 1) * 8000] for i in range(n)]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    server = SimulatorServer(SimulatorConfig(), cid=TEST_CID, api_key=TEST_API_KEY)
    await server.start("127.0.0.1:0")
    yield server
    await server.stop(0.2)


def make(pool: ChannelPool, metrics: Metrics, leg: str, results: list[DeepfakeResult], key: str = TEST_API_KEY,
         states: list[str] | None = None) -> LegStream:
    return LegStream(pool, UpstreamCredentials(TEST_CID, key), LegRef("call", leg), upstream=FAST, queue_chunks=200,
                     replay_chunks=40, metrics=metrics, clock=SystemClock(), on_result=results.append,
                     on_state=(lambda _s, st: states.append(st)) if states is not None else None)


def pool_for(sim: SimulatorServer, metrics: Metrics, size: int = 2) -> ChannelPool:
    return ChannelPool(sim.target, tls=False, size=size, keepalive_s=20, max_streams_per_channel=100,
                       breaker_failures=5, breaker_open_s=1, clock=SystemClock(), metrics=metrics)


async def test_legs_spread_over_distinct_connections(sim: SimulatorServer) -> None:
    metrics = Metrics()
    pool = pool_for(sim, metrics)
    results: list[DeepfakeResult] = []
    streams = [make(pool, metrics, f"leg{i}", results) for i in range(4)]
    chunks = unique_chunks(16)
    for s in streams:
        s.start()
        for c in chunks:
            s.send_chunk(c, 0.0)
    for s in streams:
        await s.finish(10)
    await pool.close()
    assert all(s.state == "finished" and s.analysed and s.simulated and s.pid for s in streams)
    assert len({s.pid for s in streams}) == 4
    assert all(ch.opened_streams == 2 for ch in pool.channels)  # least-loaded pick
    assert len({rec.peer for rec in sim.streams.values()}) >= 2  # separate client connections (ports)
    for rec in sim.streams.values():
        assert rec.chunks == chunks  # config first, then every chunk once, in order
    spoofed = [r for r in results if r.level is Level.SEGMENT]
    assert len(spoofed) == 4 * 2 and all(r.label == "spoofed" for r in spoofed)


async def test_unavailable_mid_leg_replays_in_order_without_duplicates(sim: SimulatorServer) -> None:
    metrics = Metrics()
    pool = pool_for(sim, metrics, size=1)
    results: list[DeepfakeResult] = []
    states: list[str] = []
    stream = make(pool, metrics, "inbound", results, states=states)
    stream.start()
    chunks = unique_chunks(48)  # 12 s of audio
    sim.set_faults(unavailable_after_s=1.0)
    for i, c in enumerate(chunks):
        stream.send_chunk(c, 0.0)
        await asyncio.sleep(0.05)
        if i == 30:
            sim.set_faults(unavailable_after_s=0.0)  # the upstream heals
    await stream.finish(10)
    await pool.close()
    records = [sim.streams[pid] for pid in sorted(sim.streams)]
    assert len(records) >= 2 and "retrying" in states
    index = {c: i for i, c in enumerate(chunks)}
    covered: set[int] = set()
    for rec in records:
        got = [index[c] for c in rec.chunks]
        assert len(got) == len(set(got))  # never a chunk twice on one stream
        assert got == list(range(got[0], got[0] + len(got))) if got else True  # a contiguous, in-order run
        covered.update(got)
    assert covered == set(range(len(chunks)))  # every chunk reached upstream
    assert metrics.registry.get_sample_value("spoofwatch_upstream_reconnects_total") >= 1
    assert metrics.registry.get_sample_value("spoofwatch_upstream_replayed_chunks_total") >= 1
    assert max(r.end_s for r in results) >= 10.0  # results of the new stream are in call time
    segment_ends = sorted(r.end_s for r in results if r.level is Level.SEGMENT)
    assert segment_ends[-1] <= 12.0 + 1e-6


async def test_wrong_key_no_retry_storm(sim: SimulatorServer) -> None:
    metrics = Metrics()
    pool = pool_for(sim, metrics, size=1)
    results: list[DeepfakeResult] = []
    stream = make(pool, metrics, "inbound", results, key="wrong")
    stream.start()
    for c in unique_chunks(8):
        stream.send_chunk(c, 0.0)
        await asyncio.sleep(0.05)
    opened_at_failure = sim.streams_opened
    for c in unique_chunks(8):  # more audio after the refusal: no new stream
        stream.send_chunk(c, 0.0)
        await asyncio.sleep(0.05)
    await stream.finish(2)
    await pool.close()
    # bounded: a write racing the server's abort can surface as INTERNAL and be retried once or twice
    assert stream.state == "auth_failed" and not stream.analysed and sim.streams_opened <= 3
    assert sim.streams_opened == opened_at_failure
    assert "UNAUTHENTICATED" in stream.last_error
    assert metrics.registry.get_sample_value("spoofwatch_drops_total",
                                             {"ingest": "upstream", "reason": "upstream_failed"}) >= 1
