"""The simulator as a real gRPC server on port 0: every protocol violation gets its status code and a
clear detail; spoofed / clean / silence behave as documented; level filter; faults."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import numpy as np
import pytest

from daemon.config import SimulatorConfig
from daemon.upstream.pb import api_pb2 as pb
from daemon.upstream.pb import api_pb2_grpc as pbg
from daemon.upstream.simulator import SimulatorServer
from tests.conftest import TEST_API_KEY, TEST_CID, read_wav

CFG = pb.AudioConfig(encoding=pb.LINEAR_PCM, sample_rate_hertz=16000)


def msg(audio: bytes = b"", config: pb.AudioConfig | None = None, cid: int = TEST_CID,
        key: str = TEST_API_KEY) -> pb.AudioStream:
    m = pb.AudioStream(cid=cid, x_auth_token=key, audio_content=audio)
    if config is not None:
        m.config.CopyFrom(config)
    return m


def chunks_of(pcm: np.ndarray) -> list[bytes]:
    raw = pcm.astype("<i2").tobytes()
    return [raw[i:i + 8000] for i in range(0, len(raw), 8000)]


async def stream(target: str, messages: Iterable[pb.AudioStream]) -> tuple[list[pb.StreamResult], Any]:
    async def gen() -> AsyncIterator[pb.AudioStream]:
        for m in messages:
            yield m

    async with grpc.aio.insecure_channel(target) as channel:
        call = pbg.BehavioralStreamingApiStub(channel).DeepfakeDetection(gen())
        out = [r async for r in call]
        return out, await call.initial_metadata()


async def expect_status(target: str, messages: list[pb.AudioStream], code: grpc.StatusCode, needle: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream(target, messages)
    assert err.value.code() == code, err.value
    assert needle in (err.value.details() or ""), err.value.details()


@pytest.mark.parametrize(("messages", "code", "needle"), [
    ([msg(b"\x00\x00")], grpc.StatusCode.INVALID_ARGUMENT, "first message must carry config"),
    ([msg(b"\x00\x00", config=CFG)], grpc.StatusCode.INVALID_ARGUMENT, "must not carry audio"),
    ([msg(config=CFG), msg(config=CFG)], grpc.StatusCode.INVALID_ARGUMENT, "config is allowed on the first"),
    ([msg(config=CFG), msg()], grpc.StatusCode.INVALID_ARGUMENT, "audio_content missing"),
    ([msg(config=CFG), msg(b"\x00\x00\x00")], grpc.StatusCode.INVALID_ARGUMENT, "odd length 3"),
    ([msg(config=pb.AudioConfig(encoding=pb.LINEAR_PCM, sample_rate_hertz=8000))],
     grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hertz 8000 not supported"),
    ([msg(config=CFG, key="")], grpc.StatusCode.UNAUTHENTICATED, "x_auth_token missing"),
    ([msg(config=CFG, key="nope")], grpc.StatusCode.UNAUTHENTICATED, "x_auth_token not accepted"),
    ([msg(config=CFG, cid=0)], grpc.StatusCode.UNAUTHENTICATED, "cid missing"),
    ([msg(config=CFG, cid=99)], grpc.StatusCode.UNAUTHENTICATED, "cid 99 is not the project"),
    ([msg(config=CFG), msg(b"\x00\x00", key="")], grpc.StatusCode.UNAUTHENTICATED, "missing on message 2"),
])
async def test_protocol_violations(simulator: SimulatorServer, messages: list[pb.AudioStream],
                                   code: grpc.StatusCode, needle: str) -> None:
    await expect_status(simulator.target, messages, code, needle)


async def test_oversize_and_stream_audio_unimplemented() -> None:
    server = SimulatorServer(dataclasses.replace(SimulatorConfig(), max_message_bytes=16000), cid=TEST_CID,
                             api_key=TEST_API_KEY)
    await server.start("127.0.0.1:0")
    try:
        await expect_status(server.target, [msg(config=CFG), msg(b"\x00" * 16002)],
                            grpc.StatusCode.RESOURCE_EXHAUSTED, "over 16000")
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = pbg.BehavioralStreamingApiStub(channel).StreamAudio(iter([msg(config=CFG)]))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [r async for r in call]
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


def results(msgs: list[pb.StreamResult]) -> list[pb.InferenceResult]:
    return [r for m in msgs for r in m.result]


async def test_marked_clip_spoofed_segments_and_utterance(simulator: SimulatorServer, marked_clip: Any) -> None:
    pcm, _ = read_wav(marked_clip)
    out, metadata = await stream(simulator.target, [msg(config=CFG)] + [msg(c) for c in chunks_of(pcm)])
    assert ("x-spoofwatch-simulated", "marker-tone-rule") in list(metadata)
    assert [m.message_id for m in out] == list(range(1, len(out) + 1))
    assert len({m.pid for m in out}) == 1 and all(m.cid == TEST_CID for m in out)
    rs = results(out)
    seg = [r for r in rs if r.level == pb.segment]
    utt = [r for r in rs if r.level == pb.utterance]
    assert len(seg) == 4 and len(utt) == 1  # 8 s of voiced audio: a segment per 2 s, one utterance at the end
    for r in rs:
        post = {p.label: p.posterior for p in r.prediction}
        assert r.task == "deepfake" and r.final_label == "spoofed" and float(post["spoofed"]) >= 0.9
        assert float(post["spoofed"]) + float(post["bonafide"]) == pytest.approx(1.0, abs=1e-9)
        assert float(r.end_time) > float(r.start_time) and r.start_time.count(".") == 1
    assert [float(r.end_time) for r in seg] == [2.0, 4.0, 6.0, 8.0]


async def test_clean_bonafide_silence_nothing_and_level_filter(simulator: SimulatorServer, clean_clip: Any) -> None:
    pcm, _ = read_wav(clean_clip)
    out, _ = await stream(simulator.target, [msg(config=CFG)] + [msg(c) for c in chunks_of(pcm)])
    rs = results(out)
    assert rs and all(r.final_label == "bonafide" for r in rs)
    assert all(float({p.label: p.posterior for p in r.prediction}["spoofed"]) <= 0.1 for r in rs)
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(16000 * 5) * 30).astype(np.int16)  # 5 s of faint noise (~ −60 dBFS)
    out, _ = await stream(simulator.target, [msg(config=CFG)] + [msg(c) for c in chunks_of(quiet)])
    assert results(out) == []
    only_utt = pb.AudioConfig(encoding=pb.LINEAR_PCM, sample_rate_hertz=16000, level=pb.utterance)
    out, _ = await stream(simulator.target, [msg(config=only_utt)] + [msg(c) for c in chunks_of(pcm)])
    assert results(out) and all(r.level == pb.utterance for r in results(out))
    only_seg = pb.AudioConfig(encoding=pb.LINEAR_PCM, sample_rate_hertz=16000, level=pb.segment)
    out, _ = await stream(simulator.target, [msg(config=only_seg)] + [msg(c) for c in chunks_of(pcm)])
    assert results(out) and all(r.level == pb.segment for r in results(out))


async def test_silence_ends_an_utterance(simulator: SimulatorServer, marked_clip: Any) -> None:
    pcm, rate = read_wav(marked_clip)
    speech = pcm[: 3 * rate]
    audio = np.concatenate([speech, np.zeros(rate, np.int16), speech])
    out, _ = await stream(simulator.target, [msg(config=CFG)] + [msg(c) for c in chunks_of(audio)])
    utt = [r for r in results(out) if r.level == pb.utterance]
    assert [(float(r.start_time), float(r.end_time)) for r in utt] == [(0.0, 3.0), (4.0, 7.0)]
    assert len({r.id for r in results(out)}) == len(results(out))


async def test_faults(simulator: SimulatorServer, marked_clip: Any) -> None:
    pcm, _ = read_wav(marked_clip)
    messages = [msg(config=CFG)] + [msg(c) for c in chunks_of(pcm)]
    simulator.set_faults(refuse_new_streams=True)
    # config only: a client still writing audio when the server refuses can see gRPC core's INTERNAL instead
    await expect_status(simulator.target, messages[:1], grpc.StatusCode.UNAVAILABLE, "refusing new streams")
    simulator.set_faults(refuse_new_streams=False, drop_results_ratio=1.0)
    out, _ = await stream(simulator.target, messages)
    assert out == []  # every result dropped, the stream itself ends OK
    simulator.set_faults(drop_results_ratio=0.0, result_latency_ms=5)
    simulator.keep_records = True  # finished streams and their audio are kept only when asked for
    out, _ = await stream(simulator.target, messages)
    assert len(results(out)) == 5
    record = simulator.streams[out[0].pid]
    assert record.chunks == [m.audio_content for m in messages[1:]] and record.status_code == grpc.StatusCode.OK

    async def slow() -> AsyncIterator[pb.AudioStream]:
        import asyncio

        for m in messages:
            yield m
            await asyncio.sleep(0.05)

    for fault, needle in (("unavailable_after_s", "service unavailable"), ("close_connection_after_s",
                                                                           "connection reset")):
        simulator.set_faults(result_latency_ms=0, **{fault: 0.3})
        async with grpc.aio.insecure_channel(simulator.target) as channel:
            call = pbg.BehavioralStreamingApiStub(channel).DeepfakeDetection(slow())
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [r async for r in call]
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and needle in (err.value.details() or "")
        simulator.set_faults(**{fault: 0.0})


async def test_records_are_not_kept_by_default(simulator: SimulatorServer, marked_clip: Any) -> None:
    """A running daemon's embedded simulator keeps nothing per finished stream (no audio ever): only the
    open streams are listed, for `streams_active`."""
    import asyncio

    pcm, _ = read_wav(marked_clip)
    chunks = chunks_of(pcm)
    assert not simulator.keep_records
    half_sent = asyncio.Event()
    go_on = asyncio.Event()

    async def paused() -> AsyncIterator[pb.AudioStream]:
        yield msg(config=CFG)
        for i, c in enumerate(chunks):
            if i == len(chunks) // 2:
                half_sent.set()
                await go_on.wait()
            yield msg(c)

    async with grpc.aio.insecure_channel(simulator.target) as channel:
        call = pbg.BehavioralStreamingApiStub(channel).DeepfakeDetection(paused())
        reading = asyncio.ensure_future(call.initial_metadata())
        await half_sent.wait()
        async with asyncio.timeout(10):
            while not any(r.messages > len(chunks) // 2 for r in simulator.streams.values()):  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # (polls the server's state: no event to await)
        (open_record,) = simulator.streams.values()
        assert simulator.streams_active == 1 and open_record.audio_bytes > 0 and open_record.chunks == []
        go_on.set()
        out = [r async for r in call]
        await reading
    assert results(out)
    for _ in range(2):
        out, _ = await stream(simulator.target, [msg(config=CFG)] + [msg(c) for c in chunks])
        assert results(out)
    assert simulator.streams_opened == 3 and simulator.streams == {} and simulator.streams_active == 0
