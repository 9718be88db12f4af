"""RtpIngest over real UDP sockets on 127.0.0.1, with a recording CallAdmission: reordering on the
wire, garbage datagrams, SSRC change, RTCP BYE, inactivity, a flood next to a normal call, and the
control API."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import socket
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest

from daemon.audio.codecs import encode_ulaw, make_decoder
from daemon.calls.api import CallRefused
from daemon.clock import SystemClock
from daemon.config import RtpIngestConfig
from daemon.ingest.rtp.control import RtpControlServer
from daemon.ingest.rtp.packet import build_rtcp_bye, build_rtp
from daemon.ingest.rtp.server import RtpIngest
from daemon.model import AudioFormat, CallInfo
from daemon.ops.metrics import Metrics


class RecordingLeg:
    def __init__(self, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self.pcm: list[np.ndarray] = []
        self.silence_s = 0.0
        self.closed = False
        self.raw_pushes = 0

    def push(self, payload: bytes, received_at: float) -> None:
        # G.711 in the leg's own format is handed over undecoded (the real sink's path decodes it)
        assert self.fmt.codec.value in ("pcmu", "pcma"), self.fmt
        self.raw_pushes += 1
        self.pcm.append(make_decoder(self.fmt).decode(payload))

    def push_pcm(self, samples: np.ndarray, rate: int, received_at: float) -> None:
        assert rate == 8000
        self.pcm.append(samples)

    def push_silence(self, seconds: float, received_at: float) -> None:
        self.silence_s += seconds

    def close(self) -> None:
        self.closed = True

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.pcm) if self.pcm else np.zeros(0, np.int16)


class RecordingCall:
    def __init__(self, info: CallInfo) -> None:
        self.info = info
        self.legs: dict[str, RecordingLeg] = {}
        self.ended: str | None = None

    def open_leg(self, leg: str, fmt: AudioFormat) -> RecordingLeg:
        return self.legs.setdefault(leg, RecordingLeg(fmt))

    def dtmf(self, leg: str, digit: str) -> None:
        pass

    def end(self, reason: str) -> None:
        self.ended = reason


class Admission:
    def __init__(self, limit: int = 100) -> None:
        self.calls: dict[str, RecordingCall] = {}
        self.limit = limit

    def admit(self, info: CallInfo) -> RecordingCall:
        if len(self.calls) >= self.limit:
            raise CallRefused("max_calls")
        return self.calls.setdefault(info.call_id, RecordingCall(info))


def port_base() -> int:
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").lstrip("gw") or 0)
    return 45000 + 400 * worker + 20 * random.randrange(15)


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[RtpIngest, Admission, Metrics]]:
    admission, metrics = Admission(), Metrics()
    base = port_base()
    cfg = dataclasses.replace(RtpIngestConfig(), enabled=True, port_min=base, port_max=base + 19,
                              inactivity_timeout_ms=400, batch_ms=20)
    rtp = RtpIngest(cfg, admission, metrics, SystemClock())
    await rtp.start()
    yield rtp, admission, metrics
    await rtp.close()


def tone_packets(n: int, seq0: int = 1000, ssrc: int = 7) -> list[tuple[int, bytes]]:
    t = np.arange(n * 160) / 8000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    ulaw = encode_ulaw(pcm)
    return [(seq0 + i, build_rtp(0, seq0 + i, i * 160, ssrc, ulaw[i * 160:(i + 1) * 160])) for i in range(n)]


async def until(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 (polls the ingest's state)
            await asyncio.sleep(0.02)


def drops(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("spoofwatch_drops_total", {"ingest": "rtp", "reason": reason}) or 0.0


async def test_reordered_on_the_wire_comes_out_in_order(ingest: tuple[RtpIngest, Admission, Metrics]) -> None:
    rtp, admission, _ = ingest
    port = rtp.rtp_ports[0]
    packets = tone_packets(50)
    order = list(range(50))
    for i in range(0, 50, 4):
        random.Random(i).shuffle(seg := order[i:i + 4])
        order[i:i + 4] = seg
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in order:
            s.sendto(packets[i][1], ("127.0.0.1", port))
        s.sendto(build_rtcp_bye(7), ("127.0.0.1", port + 1))
    await until(lambda: any(c.ended for c in admission.calls.values()))
    (call,) = admission.calls.values()
    assert call.info.call_id == f"rtp-{port}-00000007" and call.ended == "rtcp_bye"
    leg = call.legs["caller"]
    expected = np.concatenate([np.frombuffer(bytes(p[1][12:]), np.uint8) for p in packets])
    from daemon.audio.codecs import decode_ulaw

    assert np.array_equal(leg.samples, decode_ulaw(expected.tobytes())) and leg.closed and leg.silence_s == 0
    assert leg.raw_pushes > 0  # after playout starts, PCMU goes to the leg as it arrives, undecoded


async def test_garbage_counted_ssrc_change_continues_leg_and_gaps_filled(
        ingest: tuple[RtpIngest, Admission, Metrics]) -> None:
    rtp, admission, metrics = ingest
    port = rtp.rtp_ports[1]
    first = tone_packets(10, seq0=65530, ssrc=1)
    second = tone_packets(10, seq0=200, ssrc=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x00", b"\x40" + b"\x00" * 20, b"\x80" * 5):
            s.sendto(junk, ("127.0.0.1", port))
        for i, (_, p) in enumerate(first):
            if i != 5:  # one lost packet → 20 ms of silence from the timestamp delta
                s.sendto(p, ("127.0.0.1", port))
        await asyncio.sleep(0.1)
        for _, p in second:
            s.sendto(p, ("127.0.0.1", port))
    await until(lambda: any(c.ended for c in admission.calls.values()), timeout=5)
    (call,) = admission.calls.values()  # the SSRC change did not open a second call
    assert call.ended == "inactivity"
    leg = call.legs["caller"]
    assert len(leg.samples) == 19 * 160 and leg.silence_s == pytest.approx(0.02)
    assert drops(metrics, "too_short") == 3 and drops(metrics, "bad_version") == 1


async def test_flood_on_one_port_does_not_starve_another(ingest: tuple[RtpIngest, Admission, Metrics]) -> None:
    rtp, admission, _ = ingest
    normal_port, flood_port = rtp.rtp_ports[2], rtp.rtp_ports[3]
    normal = tone_packets(25, ssrc=10)
    flood = [p for _, p in tone_packets(1500, ssrc=11)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        for i, (_, p) in enumerate(normal):
            s.sendto(p, ("127.0.0.1", normal_port))
            for f in flood[i * 60:(i + 1) * 60]:
                s.sendto(f, ("127.0.0.1", flood_port))
            await asyncio.sleep(0.002)
        s.sendto(build_rtcp_bye(10), ("127.0.0.1", normal_port + 1))
    await until(lambda: f"rtp-{normal_port}-0000000a" in admission.calls
                and admission.calls[f"rtp-{normal_port}-0000000a"].ended is not None)
    assert len(admission.calls[f"rtp-{normal_port}-0000000a"].legs["caller"].samples) == 25 * 160


async def test_control_api(ingest: tuple[RtpIngest, Admission, Metrics], monkeypatch: pytest.MonkeyPatch) -> None:
    rtp, admission, metrics = ingest
    monkeypatch.setenv("TEST_RTP_TOKEN", "s3cret")
    cfg = dataclasses.replace(rtp.cfg, control_listen="127.0.0.1:0", control_token_env="TEST_RTP_TOKEN")
    control = RtpControlServer(cfg, rtp, metrics)
    port = await control.start()
    base = f"http://127.0.0.1:{port}/v1/rtp/sessions"
    auth = {"Authorization": "Bearer s3cret"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(base, json={"call_id": "c1"}) as r:
                assert r.status == 401
            async with http.post(base, headers={"Authorization": "Bearer nope"}, json={"call_id": "c1"}) as r:
                assert r.status == 401
            async with http.post(base, headers=auth, data=b"{not json") as r:
                assert r.status == 400
            async with http.post(base, headers=auth, json={"call_id": "c1", "legs": [{"name": "a", "codec_map":
                                                                                    {"300": "PCMU/8000"}}]}) as r:
                assert r.status == 400 and "0–127" in (await r.json())["error"]
            async with http.post(base, headers=auth, json={"call_id": "c1", "legs": [{"name": "caller"},
                                                                                   {"name": "agent"}],
                                                          "metadata": {"pbx": "ast1"}}) as r:
                assert r.status == 201
                legs = {lg["name"]: lg for lg in (await r.json())["legs"]}
            assert legs["caller"]["port"] != legs["agent"]["port"]
            assert admission.calls["c1"].info.metadata["pbx"] == "ast1"
            async with http.post(base, headers=auth, json={"call_id": "c1"}) as r:
                assert r.status == 409
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _, p in tone_packets(5, ssrc=3):
                    s.sendto(p, ("127.0.0.1", legs["agent"]["port"]))
            await until(lambda: "agent" in admission.calls["c1"].legs
                        and len(admission.calls["c1"].legs["agent"].samples) == 5 * 160)
            async with http.delete(f"{base}/c1", headers=auth) as r:
                assert r.status == 204
            assert admission.calls["c1"].ended == "control_api"
            async with http.delete(f"{base}/c1", headers=auth) as r:
                assert r.status == 404
            admission.limit = len(admission.calls)
            async with http.post(base, headers=auth, json={"call_id": "c2"}) as r:
                assert r.status == 503
            async with http.post(base, headers=auth, json={"call_id": "c3", "legs": [{"name": f"l{i}"}
                                                                                   for i in range(8)]}) as r:
                assert r.status in (503, 201)
    finally:
        await control.close()
