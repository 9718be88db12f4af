"""TwilioIngest over real websockets on 127.0.0.1:0, with a recording CallAdmission."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from daemon.calls.api import CallRefused
from daemon.clock import Clock, FakeClock, SystemClock
from daemon.config import TwilioIngestConfig
from daemon.ingest.twilio.server import TwilioIngest
from daemon.model import PCMU_8K, AudioFormat, CallInfo
from daemon.ops.metrics import Metrics

WAIT = 10.0  # bound on every wait; tests finish far sooner


# a recording CallAdmission ----------------------------------------------------------------------
@dataclass
class FakeSink:
    payloads: list[bytes] = field(default_factory=list)
    silence: list[float] = field(default_factory=list)
    closed: bool = False
    explode: bool = False
    pushed: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, payload: bytes, received_at: float) -> None:
        if self.explode:
            raise RuntimeError("boom")
        self.payloads.append(payload)
        self.pushed.set()

    async def wait_payloads(self, n: int) -> None:
        """Until `n` payloads were pushed (bounded)."""
        async with asyncio.timeout(WAIT):
            while len(self.payloads) < n:
                self.pushed.clear()
                await self.pushed.wait()

    def push_pcm(self, samples: npt.NDArray[np.int16], rate: int, received_at: float) -> None:
        raise AssertionError("twilio pushes encoded μ-law")

    def push_silence(self, seconds: float, received_at: float) -> None:
        self.silence.append(seconds)

    def close(self) -> None:
        self.closed = True


class FakeCall:
    def __init__(self, info: CallInfo, explode: bool) -> None:
        self._info = info
        self.legs: dict[str, FakeSink] = {}
        self.dtmf_digits: list[tuple[str, str]] = []
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        self.explode = explode
        self.leg_opened = asyncio.Event()

    @property
    def info(self) -> CallInfo:
        return self._info

    def open_leg(self, leg: str, fmt: AudioFormat) -> FakeSink:
        assert fmt == PCMU_8K
        self.leg_opened.set()
        return self.legs.setdefault(leg, FakeSink(explode=self.explode))

    async def leg(self, name: str) -> FakeSink:
        """The leg, once opened (bounded wait)."""
        async with asyncio.timeout(WAIT):
            while name not in self.legs:
                self.leg_opened.clear()
                await self.leg_opened.wait()
        return self.legs[name]

    def dtmf(self, leg: str, digit: str) -> None:
        self.dtmf_digits.append((leg, digit))

    def end(self, reason: str) -> None:
        assert self.end_reason is None, "end() called twice"
        self.end_reason = reason
        for sink in self.legs.values():
            sink.close()
        self.ended.set()


class FakeAdmission:
    def __init__(self) -> None:
        self.calls: dict[str, FakeCall] = {}  # by call id, the latest
        self.history: list[str] = []  # every admitted call id, in order
        self.busy: set[str] = set()  # ids the real registry still holds (a call finishing its results)
        self.refuse: str | None = None
        self.explode_for: set[str] = set()
        self._admitted = asyncio.Event()

    def admit(self, info: CallInfo) -> FakeCall:
        if self.refuse:
            raise CallRefused(self.refuse)
        if info.call_id in self.busy:
            raise CallRefused("duplicate_call_id")
        call = FakeCall(info, explode=info.metadata.get("explode") == "1")
        self.calls[info.call_id] = call
        self.history.append(info.call_id)
        self._admitted.set()
        return call

    async def wait_call(self, call_id: str) -> FakeCall:
        async with asyncio.timeout(WAIT):
            while call_id not in self.calls:
                self._admitted.clear()
                await self._admitted.wait()
        return self.calls[call_id]

    async def wait_ended(self, n: int) -> None:
        """Until `n` calls were admitted and all of them ended (bounded)."""
        async with asyncio.timeout(WAIT):
            while len(self.history) < n:
                self._admitted.clear()
                await self._admitted.wait()
            for call in list(self.calls.values()):
                await call.ended.wait()


# a Twilio-shaped client ---------------------------------------------------------------------------
class TwilioClient:
    def __init__(self, ws: ClientConnection, call_sid: str, stream_sid: str) -> None:
        self.ws = ws
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.seq = 0
        self.chunks = {"inbound": 0, "outbound": 0}

    def _seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    async def start(self, params: dict[str, str] | None = None, tracks: tuple[str, ...] = ("inbound", "outbound"),
                    media_format: dict[str, Any] | None = None) -> None:
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self.ws.send(json.dumps({"event": "start", "sequenceNumber": self._seq(), "streamSid": self.stream_sid,
                                       "start": {"streamSid": self.stream_sid, "accountSid": "ACtest",
                                                 "callSid": self.call_sid, "tracks": list(tracks),
                                                 "customParameters": params or {},
                                                 "mediaFormat": media_format or {"encoding": "audio/x-mulaw",
                                                                                 "sampleRate": 8000, "channels": 1}}}))

    async def media(self, track: str, payload: bytes, ts: int | None = None) -> None:
        self.chunks[track] += 1
        n = self.chunks[track]
        await self.ws.send(json.dumps({"event": "media", "sequenceNumber": self._seq(), "streamSid": self.stream_sid,
                                       "media": {"track": track, "chunk": str(n),
                                                 "timestamp": str((n - 1) * 20 if ts is None else ts),
                                                 "payload": base64.b64encode(payload).decode()}}))

    async def dtmf(self, digit: str) -> None:
        await self.ws.send(json.dumps({"event": "dtmf", "sequenceNumber": self._seq(), "streamSid": self.stream_sid,
                                       "dtmf": {"track": "inbound_track", "digit": digit}}))

    async def stop(self) -> None:
        await self.ws.send(json.dumps({"event": "stop", "sequenceNumber": self._seq(), "streamSid": self.stream_sid,
                                       "stop": {"accountSid": "ACtest", "callSid": self.call_sid}}))

    async def closed_code(self) -> tuple[int | None, str]:
        """Wait (bounded) for the server to close; (code, reason) it sent."""
        async with asyncio.timeout(WAIT):
            await self.ws.wait_closed()
        rcvd = self.ws.close_code, self.ws.close_reason or ""
        return rcvd


def frames(tag: int, n: int) -> list[bytes]:
    """Distinct 160-byte frames so delivery order and content are checkable."""
    return [bytes([(tag * 31 + i) % 256]) * 80 + i.to_bytes(2, "big") * 40 for i in range(n)]


@dataclass
class Env:
    ingest: TwilioIngest
    admission: FakeAdmission
    metrics: Metrics
    url: str

    def drops(self, reason: str) -> float:
        v = self.metrics.registry.get_sample_value("spoofwatch_drops_total", {"ingest": "twilio", "reason": reason})
        return v or 0.0

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def twilio_envs() -> AsyncIterator[Callable[..., Awaitable[Env]]]:
    """Makes standalone Twilio ingests (each on its own listener, with a recording admission); closes them."""
    made: list[TwilioIngest] = []

    async def make(clock: Clock | None = None, **cfg: Any) -> Env:
        cfg.setdefault("validate_signature", False)  # signed upgrades: tests/unit/test_twilio_signature.py
        max_frame_bytes = cfg.pop("max_frame_bytes", 65536)  # a [ingest.websocket] key: the listener's bound
        config = TwilioIngestConfig(**cfg)
        admission = FakeAdmission()
        metrics = Metrics()
        ingest = TwilioIngest(config, admission, metrics, clock or SystemClock(), max_frame_bytes=max_frame_bytes)
        made.append(ingest)
        port = await ingest.start()
        return Env(ingest, admission, metrics, f"ws://127.0.0.1:{port}{config.path}")

    try:
        yield make
    finally:
        for ingest in made:
            await ingest.close(timeout=5.0)


@pytest.fixture
async def env_factory() -> AsyncIterator[Callable[..., Awaitable[Env]]]:
    async with twilio_envs() as make:
        yield make


@pytest.fixture
async def env(env_factory: Callable[..., Awaitable[Env]]) -> Env:
    return await env_factory()


async def good_call(env: Env, call_sid: str, n: int = 50) -> tuple[list[bytes], list[bytes]]:
    """A complete both-tracks call; returns what it sent per track."""
    inbound, outbound = frames(1, n), frames(2, n)
    async with connect(env.url) as ws:
        c = TwilioClient(ws, call_sid, "MZ" + call_sid[2:])
        await c.start({"tenant": "acme"})
        for a, b in zip(inbound, outbound, strict=True):
            await c.media("inbound", a)
            await c.media("outbound", b)
        await c.stop()
        code, _ = await c.closed_code()
        assert code == 1000
    return inbound, outbound


# tests --------------------------------------------------------------------------------------------
async def test_two_tracks_two_legs_metadata_and_stop(env: Env) -> None:
    inbound, outbound = frames(1, 40), frames(2, 40)
    async with connect(env.url) as ws:
        c = TwilioClient(ws, "CAone", "MZone")
        await c.start({"tenant": "acme", "call_sid": "spoofed-by-param"})
        for a, b in zip(inbound, outbound, strict=True):
            await c.media("inbound", a)
            await c.media("outbound", b)
        await c.dtmf("7")
        await c.stop()
        assert (await c.closed_code())[0] == 1000
    call = await env.admission.wait_call("CAone")
    async with asyncio.timeout(WAIT):
        await call.ended.wait()
    assert call.info.ingest == "twilio"
    assert dict(call.info.metadata) == {"tenant": "acme", "call_sid": "CAone", "stream_sid": "MZone",
                                        "account_sid": "ACtest"}
    assert set(call.legs) == {"inbound", "outbound"}
    assert call.legs["inbound"].payloads == inbound
    assert call.legs["outbound"].payloads == outbound
    assert call.dtmf_digits == [("inbound", "7")]
    assert call.end_reason == "stop"
    assert all(s.closed for s in call.legs.values())
    assert env.metric("spoofwatch_frames_received_total", ingest="twilio") == 80


async def test_socket_close_without_stop_ends_call(env: Env) -> None:
    async with connect(env.url) as ws:
        c = TwilioClient(ws, "CAdrop", "MZdrop")
        await c.start()
        await c.media("inbound", frames(1, 1)[0])
    call = await env.admission.wait_call("CAdrop")
    async with asyncio.timeout(WAIT):
        await call.ended.wait()
    assert call.end_reason == "disconnected"
    assert list(call.legs) == ["inbound"]


async def test_timestamp_jump_fills_silence_within_cap_and_wall_clock(
        env_factory: Callable[..., Awaitable[Env]]) -> None:
    clock = FakeClock()  # the ingest's clock: moved by hand between frames, each read once it was handled
    env = await env_factory(clock=clock, gap_fill_max_ms=1000)
    frame = frames(1, 1)[0]
    async with connect(env.url) as ws:
        c = TwilioClient(ws, "CAgap", "MZgap")
        await c.start()
        call = await env.admission.wait_call("CAgap")
        for sent, (advance_s, ts) in enumerate([(0.0, 0), (0.52, 520), (3.02, 3540), (0.1, 5560)], start=1):
            clock.advance(advance_s)
            await c.media("inbound", frame, ts=ts)
            # the ingest read the clock for this frame before pushing it: only now may the clock move on
            await (await call.leg("inbound")).wait_payloads(sent)
        await c.stop()
        await c.closed_code()
    # 500 ms lost and 500 ms passed: filled whole; 3 s lost: the 1 s cap; 2 s of timestamps within
    # 100 ms of wall clock: only the 80 ms that passed after the previous 20 ms frame
    assert call.legs["inbound"].silence == pytest.approx([0.5, 1.0, 0.08])
    assert env.drops("gap_unfilled") == 1
    assert env.drops("gap_beyond_wall_clock") == 1


async def test_stacked_streams_of_one_call_get_distinct_ids(env: Env) -> None:
    async with connect(env.url) as ws1, connect(env.url) as ws2:
        c1, c2 = TwilioClient(ws1, "CAsame", "MZa"), TwilioClient(ws2, "CAsame", "MZb")
        await c1.start()
        await env.admission.wait_call("CAsame")
        await c2.start()
        second = await env.admission.wait_call("CAsame:MZb")
        await c1.stop()
        await c2.stop()
        await c1.closed_code()
        await c2.closed_code()
    assert second.info.metadata["stream_sid"] == "MZb"
    # once both ended, the callSid is free again
    async with connect(env.url) as ws:
        c = TwilioClient(ws, "CAsame", "MZc")
        await c.start()
        await c.stop()
        await c.closed_code()
    assert env.admission.history == ["CAsame", "CAsame:MZb", "CAsame"]


async def test_restarted_fork_while_old_call_still_finishing(env: Env) -> None:
    env.admission.busy.add("CAagain")  # the registry still finishes an earlier stream of this call
    async with connect(env.url) as ws:
        c = TwilioClient(ws, "CAagain", "MZnew")
        await c.start()
        await c.stop()
        assert (await c.closed_code())[0] == 1000
    assert env.admission.history == ["CAagain:MZnew"]


async def test_refused_call_closes_1013(env: Env) -> None:
    env.admission.refuse = "max_calls"
    async with connect(env.url) as ws:
        c = TwilioClient(ws, "CAno", "MZno")
        await c.start()
        code, reason = await c.closed_code()
    assert (code, reason) == (1013, "max_calls")
    assert env.admission.calls == {}


async def test_unsupported_media_format_closes_1003(env: Env) -> None:
    async with connect(env.url) as ws:
        c = TwilioClient(ws, "CAl16", "MZl16")
        await c.start(media_format={"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1})
        code, reason = await c.closed_code()
    assert (code, reason) == (1003, "unsupported_media_format")
    assert env.drops("unsupported_media_format") == 1
    assert env.admission.calls == {}


async def test_other_paths_404(env: Env) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(env.url.replace("/twilio", "/nope")):
            pass
    assert info.value.response.status_code == 404


async def test_stop_accepting_503_and_close_ends_calls(env: Env) -> None:
    async with connect(env.url) as ws:
        c = TwilioClient(ws, "CAopen", "MZopen")
        await c.start()
        await c.media("inbound", frames(1, 1)[0])
        call = await env.admission.wait_call("CAopen")
        env.ingest.stop_accepting()
        with pytest.raises(InvalidStatus) as info:
            async with connect(env.url):
                pass
        assert info.value.response.status_code == 503
        # the open stream is not cut by stop_accepting
        await c.media("inbound", frames(1, 2)[1])
        await env.ingest.close(timeout=5.0)
        code, _ = await c.closed_code()
    assert code == 1001
    assert call.end_reason == "shutdown"
    assert len(call.legs["inbound"].payloads) == 2
    assert env.metric("spoofwatch_calls_refused_total", ingest="twilio", reason="shutting_down") == 1


async def test_no_start_closes_1008(env_factory: Callable[..., Awaitable[Env]]) -> None:
    env = await env_factory()
    env.ingest.start_timeout_s = 0.2
    async with connect(env.url) as ws:
        await ws.send(json.dumps({"event": "connected"}))
        async with asyncio.timeout(WAIT):
            await ws.wait_closed()
        assert ws.close_code == 1008
    assert env.drops("no_start") == 1


# one bad connection never harms another -------------------------------------------------------------
async def _bad_binary(c: TwilioClient) -> None:
    await c.start()
    await c.ws.send(b"\x00\x01\x02")


async def _bad_json(c: TwilioClient) -> None:
    await c.start()
    await c.ws.send("{not json")


async def _bad_event(c: TwilioClient) -> None:
    await c.start()
    await c.ws.send(json.dumps({"event": "teleport", "streamSid": c.stream_sid}))


async def _media_before_start(c: TwilioClient) -> None:
    await c.media("inbound", frames(3, 1)[0])
    await c.start()


async def _bad_base64(c: TwilioClient) -> None:
    await c.start()
    await c.ws.send(json.dumps({"event": "media", "streamSid": c.stream_sid,
                                "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": "@@@"}}))


BAD_INPUTS = {
    "binary_frame": _bad_binary,
    "invalid_json": _bad_json,
    "unknown_event": _bad_event,
    "media_before_start": _media_before_start,
    "bad_base64": _bad_base64,
}


async def _run_alongside(env: Env, bad: Callable[[], Awaitable[None]]) -> None:
    """Run a good call and `bad` concurrently; the good call must get every frame and end by stop."""
    (inbound, outbound), _ = await asyncio.gather(good_call(env, "CAgood", n=100), bad())
    good = env.admission.calls["CAgood"]
    assert good.legs["inbound"].payloads == inbound
    assert good.legs["outbound"].payloads == outbound
    assert good.end_reason == "stop"


@pytest.mark.parametrize("reason", sorted(BAD_INPUTS))
async def test_bad_input_is_dropped_and_harms_nobody(env: Env, reason: str) -> None:
    after = frames(9, 1)[0]

    async def bad() -> None:
        async with connect(env.url) as ws:
            c = TwilioClient(ws, "CAbad", "MZbad")
            await BAD_INPUTS[reason](c)
            await c.media("inbound", after)  # the bad stream itself goes on
            await c.stop()
            assert (await c.closed_code())[0] == 1000

    await _run_alongside(env, bad)
    assert env.drops(reason) == 1
    assert env.admission.calls["CAbad"].legs["inbound"].payloads[-1] == after


async def test_oversized_frame_closes_1009_and_harms_nobody(env_factory: Callable[..., Awaitable[Env]]) -> None:
    env = await env_factory(max_frame_bytes=4096)

    async def bad() -> None:
        async with connect(env.url) as ws:
            c = TwilioClient(ws, "CAbig", "MZbig")
            await c.start()
            await c.media("inbound", bytes(8000))  # ~10.7 kB of base64 JSON > 4096
            assert (await c.closed_code())[0] == 1009

    await _run_alongside(env, bad)
    assert env.drops("oversize") == 1
    big = env.admission.calls["CAbig"]
    assert big.end_reason == "oversize" and big.legs == {}


async def test_handler_exception_is_contained(env: Env) -> None:
    async def bad() -> None:
        async with connect(env.url) as ws:
            c = TwilioClient(ws, "CAboom", "MZboom")
            await c.start({"explode": "1"})
            await c.media("inbound", frames(1, 1)[0])
            with pytest.raises(ConnectionClosed):
                for _ in range(100):  # the server closes 1011; sending eventually fails or we see the close
                    await c.media("inbound", frames(1, 1)[0])
                    await asyncio.sleep(0.01)
            assert ws.close_code == 1011

    await _run_alongside(env, bad)
    assert env.drops("handler_error") == 1
    assert env.admission.calls["CAboom"].end_reason == "error"
