"""LegStream and ChannelPool against the real grpc.aio simulator (no faults): the wire protocol (config
first, credentials on every message), results mapped to call time, `pid` and `simulated`, several
legs over distinct connections, the bounded drop-oldest queue, finish() and aclose()."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest

from daemon.clock import SystemClock
from daemon.config import SimulatorConfig, UpstreamConfig, UpstreamCredentials
from daemon.model import DeepfakeResult, LegRef, Level
from daemon.ops.metrics import Metrics
from daemon.upstream.channels import ChannelPool
from daemon.upstream.pb import api_pb2 as pb
from daemon.upstream.simulator import SimulatorServer
from daemon.upstream.simulator import server as simulator_server
from daemon.upstream.simulator.engine import SimulatorEngine
from daemon.upstream.stream import LegStream
from tests.conftest import CLIPS, TEST_API_KEY, TEST_CID, read_wav

FAST = dataclasses.replace(UpstreamConfig(), retry_initial_ms=20, retry_max_ms=200)
CHUNK = 8000


@pytest.fixture(autouse=True)
def keep_records(sim: SimulatorServer) -> None:
    """These tests inspect what each finished stream received: ask the simulator to keep it."""
    sim.keep_records = True


def clip_chunks(name: str, n: int, first_index: int = 0) -> list[bytes]:
    """n distinct 250 ms chunks of a project clip (tiled); the first sample of each carries its index."""
    pcm, rate = read_wav(CLIPS / name)
    assert rate == 16000
    tiled = np.tile(pcm, n * 4000 // len(pcm) + 1)[: n * 4000].copy()
    tiled[::4000] = np.arange(first_index, first_index + n, dtype=np.int16)
    raw = tiled.astype("<i2").tobytes()
    chunks = [raw[i * CHUNK:(i + 1) * CHUNK] for i in range(n)]
    assert len(set(chunks)) == n
    return chunks


def marked(n: int, first_index: int = 0) -> list[bytes]:
    return clip_chunks("speech_marked_16k.wav", n, first_index)


def clean(n: int) -> list[bytes]:
    return clip_chunks("speech_clean_16k.wav", n)


def expected_results(chunks: list[bytes], offset: float = 0.0) -> list[tuple[Level, float, float]]:
    """What the simulator computes for one whole stream of these chunks, in call time."""
    engine = SimulatorEngine(SimulatorConfig())
    out = []
    for c in chunks:
        out += engine.feed(c)
    out += engine.finish()
    return [(r.level, round(r.start_s + offset, 3), round(r.end_s + offset, 3)) for r in out]


def got(results: list[DeepfakeResult]) -> list[tuple[Level, float, float]]:
    return [(r.level, round(r.start_s, 3), round(r.end_s, 3)) for r in results]


@pytest.fixture
async def pools(sim: SimulatorServer) -> AsyncIterator[Callable[..., ChannelPool]]:
    made: list[ChannelPool] = []

    def make_pool(metrics: Metrics, size: int = 1) -> ChannelPool:
        pool = ChannelPool(sim.target, tls=False, size=size, keepalive_s=20, max_streams_per_channel=100,
                           breaker_failures=5, breaker_open_s=1, clock=SystemClock(), metrics=metrics)
        made.append(pool)
        return pool

    yield make_pool
    for p in made:
        await p.close()


def leg_stream(pool: ChannelPool, metrics: Metrics, results: list[DeepfakeResult], *, leg: str = "inbound",
               queue_chunks: int = 200, replay_chunks: int = 40, force_simulated: bool = False,
               states: list[str] | None = None) -> LegStream:
    return LegStream(pool, UpstreamCredentials(TEST_CID, TEST_API_KEY), LegRef("call-1", leg), upstream=FAST,
                     queue_chunks=queue_chunks, replay_chunks=replay_chunks, metrics=metrics, clock=SystemClock(),
                     on_result=results.append, force_simulated=force_simulated,
                     on_state=(lambda _s, st: states.append(st)) if states is not None else None)


class RecordingCall:
    """The client's side of one stream: every message LegStream writes, in order."""

    def __init__(self, call: Any, sent: list[pb.AudioStream]) -> None:
        self._call = call
        self.sent = sent

    async def write(self, msg: pb.AudioStream) -> None:
        self.sent.append(msg)
        await self._call.write(msg)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class RecordingStub:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[list[pb.AudioStream]] = []

    def DeepfakeDetection(self, *args: Any, **kwargs: Any) -> RecordingCall:
        self.calls.append([])
        return RecordingCall(self.inner.DeepfakeDetection(*args, **kwargs), self.calls[-1])


async def feed(stream: LegStream, chunks: list[bytes], pace_s: float = 0.0) -> None:
    for c in chunks:
        stream.send_chunk(c, SystemClock().monotonic())
        await asyncio.sleep(pace_s)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # noqa: ASYNC110 (polls simulator and stream state, no event to await)
            await asyncio.sleep(0.01)


def upstream_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("upstream")]


# the wire protocol --------------------------------------------------------------------------------

async def test_config_first_then_every_chunk_with_credentials(sim: SimulatorServer,
                                                              pools: Callable[..., ChannelPool]) -> None:
    metrics = Metrics()
    pool = pools(metrics)
    stub = RecordingStub(pool.channels[0].stub)
    pool.channels[0].stub = stub
    results: list[DeepfakeResult] = []
    stream = leg_stream(pool, metrics, results)
    chunks = marked(12)
    stream.start()
    await feed(stream, chunks, 0.005)
    await stream.finish(10)

    (sent,) = stub.calls  # one stream
    assert sent[0].HasField("config") and sent[0].audio_content == b""
    assert sent[0].config.encoding == pb.LINEAR_PCM and sent[0].config.sample_rate_hertz == 16000
    assert not sent[0].config.HasField("level")  # result_level "all"
    assert all(not m.HasField("config") for m in sent[1:])
    assert [m.audio_content for m in sent[1:]] == chunks
    assert {(m.cid, m.x_auth_token) for m in sent} == {(TEST_CID, TEST_API_KEY)}
    # and the server agrees: it would have ended the stream with INVALID_ARGUMENT / UNAUTHENTICATED otherwise
    (rec,) = sim.streams.values()
    assert rec.status_code is not None and rec.status_code.name == "OK" and rec.done
    assert rec.messages == 1 + len(chunks) and rec.chunks == chunks
    assert stream.chunks_sent == len(chunks) and stream.attempts == 1
    assert metrics.registry.get_sample_value("spoofwatch_chunks_sent_total") == len(chunks)
    assert metrics.registry.get_sample_value("spoofwatch_upstream_streams_opened_total") == 1
    assert metrics.registry.get_sample_value("spoofwatch_upstream_streams_active") == 0


@pytest.mark.parametrize(("level", "levels"), [("segment", {Level.SEGMENT}), ("utterance", {Level.UTTERANCE})])
async def test_result_level_filter_reaches_the_server(sim: SimulatorServer, pools: Callable[..., ChannelPool],
                                                      level: str, levels: set[Level]) -> None:
    metrics = Metrics()
    results: list[DeepfakeResult] = []
    stream = LegStream(pools(metrics), UpstreamCredentials(TEST_CID, TEST_API_KEY), LegRef("c", "l"),
                       upstream=dataclasses.replace(FAST, result_level=level), queue_chunks=100, replay_chunks=40,
                       metrics=metrics, clock=SystemClock(), on_result=results.append)
    stream.start()
    await feed(stream, marked(32))
    await stream.finish(10)
    assert results and {r.level for r in results} == levels


# results ------------------------------------------------------------------------------------------

async def test_marked_clip_gives_spoofed_segments_and_utterances_in_call_time(
        sim: SimulatorServer, pools: Callable[..., ChannelPool]) -> None:
    metrics = Metrics()
    results: list[DeepfakeResult] = []
    stream = leg_stream(pool := pools(metrics), metrics, results)
    chunks = marked(40)  # 10 s
    stream.start()
    await feed(stream, chunks, 0.002)
    await stream.finish(10)
    await pool.close()

    assert got(results) == expected_results(chunks)  # every result, in order, at the simulator's times
    assert {r.level for r in results} == {Level.SEGMENT, Level.UTTERANCE}
    assert all(r.label == "spoofed" and r.spoofed_posterior >= 0.99 for r in results)
    assert all(0.0 <= r.start_s < r.end_s <= 10.0 for r in results)
    (pid,) = sim.streams
    assert stream.pid == pid and stream.pids == [pid] and {r.pid for r in results} == {pid}
    assert [r.message_id for r in results] == list(range(1, len(results) + 1))
    assert all(r.leg == LegRef("call-1", "inbound") for r in results)
    assert stream.analysed and stream.state == "finished"
    segments = sum(1 for r in results if r.level is Level.SEGMENT)
    assert metrics.registry.get_sample_value(
        "spoofwatch_results_total", {"label": "spoofed", "level": "segment", "simulated": "true"}) == segments
    assert metrics.registry.get_sample_value(
        "spoofwatch_result_latency_seconds_count") == len(results)  # each result found its written chunk


async def test_clean_clip_gives_bonafide(sim: SimulatorServer, pools: Callable[..., ChannelPool]) -> None:
    metrics = Metrics()
    results: list[DeepfakeResult] = []
    stream = leg_stream(pools(metrics), metrics, results)
    chunks = clean(32)
    stream.start()
    await feed(stream, chunks)
    await stream.finish(10)
    assert got(results) == expected_results(chunks) and len(results) >= 4
    assert all(r.label == "bonafide" and r.spoofed_posterior < 0.05 for r in results)
    assert metrics.registry.get_sample_value(
        "spoofwatch_results_total", {"label": "spoofed", "level": "segment", "simulated": "true"}) is None


async def test_simulated_comes_from_the_response_header(sim: SimulatorServer, pools: Callable[..., ChannelPool],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    pool = pools(metrics)
    flagged: list[DeepfakeResult] = []
    stream = leg_stream(pool, metrics, flagged, force_simulated=False)
    assert not stream.simulated  # nothing heard yet
    stream.start()
    await feed(stream, marked(12))
    await stream.finish(10)
    assert stream.simulated and flagged and all(r.simulated for r in flagged)

    # the same server without the header: results are not marked simulated
    monkeypatch.setattr(simulator_server, "SIMULATED_HEADER", ("x-something-else", "1"))
    plain: list[DeepfakeResult] = []
    stream = leg_stream(pool, metrics, plain, leg="outbound", force_simulated=False)
    stream.start()
    await feed(stream, marked(12))
    await stream.finish(10)
    assert plain and not stream.simulated and not any(r.simulated for r in plain)
    assert metrics.registry.get_sample_value(
        "spoofwatch_results_total", {"label": "spoofed", "level": "segment", "simulated": "false"}) >= 1

    forced: list[DeepfakeResult] = []
    stream = leg_stream(pool, metrics, forced, leg="third", force_simulated=True)
    assert stream.simulated
    stream.start()
    await feed(stream, marked(12))
    await stream.finish(10)
    assert forced and all(r.simulated for r in forced)


# several legs, one pool ---------------------------------------------------------------------------

async def test_concurrent_legs_use_both_channels(sim: SimulatorServer, pools: Callable[..., ChannelPool]) -> None:
    metrics = Metrics()
    pool = pools(metrics, size=2)
    results: dict[str, list[DeepfakeResult]] = {f"leg{i}": [] for i in range(4)}
    legs = {name: leg_stream(pool, metrics, out, leg=name) for name, out in results.items()}
    chunks = {name: marked(16, first_index=1000 * i) for i, name in enumerate(legs)}
    for s in legs.values():
        s.start()
    for i in range(16):  # interleaved, as live legs are
        for name, s in legs.items():
            s.send_chunk(chunks[name][i], 0.0)
        await asyncio.sleep(0.002)
    await asyncio.gather(*(s.finish(10) for s in legs.values()))

    assert all(ch.opened_streams > 0 for ch in pool.channels)
    assert sum(ch.opened_streams for ch in pool.channels) == 4
    assert len({rec.peer for rec in sim.streams.values()}) >= 2  # two client connections (ports)
    by_pid = {rec.pid: rec for rec in sim.streams.values()}
    assert len({s.pid for s in legs.values()}) == 4
    for name, s in legs.items():
        assert s.state == "finished" and s.pid is not None
        assert by_pid[s.pid].chunks == chunks[name]  # its own audio, in order, once
        assert got(results[name]) == expected_results(chunks[name])
        assert {r.leg.leg for r in results[name]} == {name} and {r.pid for r in results[name]} == {s.pid}
    assert [ch.active for ch in pool.channels] == [0, 0]


# the bounded queue --------------------------------------------------------------------------------

async def test_full_queue_drops_the_oldest_and_keeps_call_time(sim: SimulatorServer,
                                                               pools: Callable[..., ChannelPool]) -> None:
    metrics = Metrics()
    results: list[DeepfakeResult] = []
    stream = leg_stream(pools(metrics), metrics, results, queue_chunks=3)
    chunks = marked(50)
    stream.start()  # the supervisor has not run yet: all 50 wait in the queue of 3
    for c in chunks:
        stream.send_chunk(c, 0.0)
    assert metrics.registry.get_sample_value("spoofwatch_drops_total",
                                             {"ingest": "upstream", "reason": "queue_full"}) == 47
    await stream.finish(10)
    (rec,) = sim.streams.values()
    assert rec.chunks == chunks[47:]  # the newest three, in order
    # the stream started at chunk 47: its results are moved to call time 47 × 0.25 s = 11.75 s
    assert got(results) == expected_results(chunks[47:], offset=11.75) and results
    assert all(r.start_s >= 11.75 for r in results)


# finish and close ---------------------------------------------------------------------------------

async def test_finish_returns_after_the_final_utterance(sim: SimulatorServer,
                                                        pools: Callable[..., ChannelPool]) -> None:
    metrics = Metrics()
    results: list[DeepfakeResult] = []
    states: list[str] = []
    stream = leg_stream(pools(metrics), metrics, results, states=states)
    chunks = marked(10)  # 2.5 s, cut in the middle of speech: the utterance only ends with the stream
    assert not any(r[0] is Level.UTTERANCE for r in expected_results(chunks)[:-1])
    stream.start()
    await feed(stream, chunks)
    await stream.finish(10)
    assert results and results[-1].level is Level.UTTERANCE  # sent by the server after our half-close
    assert got(results) == expected_results(chunks)
    assert states[-1] == "finished" and stream.state == "finished"
    (rec,) = sim.streams.values()
    assert rec.done and rec.status_code is not None and rec.status_code.name == "OK"
    assert upstream_tasks() == []


async def test_finish_is_bounded_when_upstream_never_answers(sim: SimulatorServer,
                                                             pools: Callable[..., ChannelPool],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    results: list[DeepfakeResult] = []
    stream = leg_stream(pools(metrics), metrics, results)
    sim.set_faults(result_latency_ms=60_000)
    stream.start()
    await feed(stream, marked(12))
    with caplog.at_level(logging.WARNING, logger="spoofwatch.upstream"):
        async with asyncio.timeout(5):
            await stream.finish(0.5)
    assert results == [] and stream.state == "finished"
    assert any("no final results" in r.getMessage() for r in caplog.records)
    assert upstream_tasks() == []


async def test_aclose_cancels_the_stream_without_leaking_tasks(sim: SimulatorServer,
                                                               pools: Callable[..., ChannelPool]) -> None:
    metrics = Metrics()
    results: list[DeepfakeResult] = []
    stream = leg_stream(pools(metrics), metrics, results)
    stream.start()
    chunks = marked(12)
    await feed(stream, chunks)
    await until(lambda: bool(results))  # the stream is up and serving
    names = {t.get_name() for t in upstream_tasks()}
    assert {"upstream:call-1/inbound", "upstream-writer:call-1/inbound", "upstream-reader:call-1/inbound"} <= names
    await stream.aclose()
    assert upstream_tasks() == []
    assert stream.state == "finished"
    assert metrics.registry.get_sample_value("spoofwatch_upstream_streams_active") == 0
    (rec,) = sim.streams.values()
    await until(lambda: rec.done)  # the server sees the call go (cancelled, not half-closed)
    assert rec.status_code is not None and rec.status_code.name == "CANCELLED"
    stream.send_chunk(chunks[0], 0.0)  # audio after close is counted, not queued
    assert metrics.registry.get_sample_value("spoofwatch_drops_total",
                                             {"ingest": "upstream", "reason": "leg_closed"}) == 1
    await stream.aclose()  # idempotent
    await stream.finish(1)


async def test_finish_without_start(sim: SimulatorServer, pools: Callable[..., ChannelPool]) -> None:
    metrics = Metrics()
    stream = leg_stream(pools(metrics), metrics, [])
    stream.send_chunk(marked(1)[0], 0.0)
    await stream.finish(1)
    assert sim.streams_opened == 0 and upstream_tasks() == []
