"""WhipIngest on 127.0.0.1:0 with real aiortc publishers and a real aiohttp client, feeding a recording
CallAdmission. Every refusal is checked to leave nothing behind: no session (its peer connection is
closed before the session is dropped), no reader or close task, no admitted call."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from daemon.calls.api import CallRefused
from daemon.clock import SystemClock
from daemon.config import ConfigError, WhipIngestConfig
from daemon.ingest.whip.server import DEV_TOKEN, WhipIngest
from daemon.loadgen.whip import WhipPublisher, _make_track_class, load_clip_48k
from daemon.loadgen.wsclient import LoadResult
from daemon.model import AudioFormat, CallInfo, Codec
from daemon.ops.metrics import Metrics

TOKEN = "test-whip-token"
WAIT = 15.0  # bound on every wait; tests finish far sooner
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/sdp"}


# a recording CallAdmission ----------------------------------------------------------------------
@dataclass
class Sink:
    samples: int = 0
    rates: set[int] = field(default_factory=set)

    def push(self, payload: bytes, received_at: float) -> None:
        raise AssertionError("whip pushes decoded PCM")

    def push_pcm(self, samples: npt.NDArray[np.int16], rate: int, received_at: float) -> None:
        assert samples.dtype == np.int16 and samples.ndim == 1
        self.samples += len(samples)
        self.rates.add(rate)

    def push_silence(self, seconds: float, received_at: float) -> None:
        pass

    def close(self) -> None:
        pass


class Call:
    def __init__(self, info: CallInfo, explode: bool = False) -> None:
        self._info = info
        self.explode = explode
        self.legs: dict[str, Sink] = {}
        self.formats: dict[str, AudioFormat] = {}
        self.end_reason: str | None = None

    @property
    def info(self) -> CallInfo:
        return self._info

    def open_leg(self, leg: str, fmt: AudioFormat) -> Sink:
        if self.explode:
            raise RuntimeError("call already ended")
        self.formats[leg] = fmt
        return self.legs.setdefault(leg, Sink())

    def dtmf(self, leg: str, digit: str) -> None:
        pass

    def end(self, reason: str) -> None:
        if self.end_reason is None:
            self.end_reason = reason


@dataclass
class Admission:
    calls: list[Call] = field(default_factory=list)
    refuse: str | None = None
    explode_legs: bool = False

    def admit(self, info: CallInfo) -> Call:
        if self.refuse:
            raise CallRefused(self.refuse)
        if any(c.info.call_id == info.call_id and c.end_reason is None for c in self.calls):
            raise CallRefused("duplicate_call_id")
        call = Call(info, explode=self.explode_legs)
        self.calls.append(call)
        return call


@dataclass
class Whip:
    ingest: WhipIngest
    admission: Admission
    metrics: Metrics
    url: str

    def drops(self, reason: str) -> float:
        return self.metrics.registry.get_sample_value("spoofwatch_drops_total",
                                                      {"ingest": "whip", "reason": reason}) or 0.0

    def refused(self, reason: str) -> float:
        return self.metrics.registry.get_sample_value("spoofwatch_calls_refused_total",
                                                      {"ingest": "whip", "reason": reason}) or 0.0


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (polls the ingest's and the calls' state)
            await asyncio.sleep(0.02)


def whip_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(("whip:", "whip-close:"))]


async def assert_nothing_left(w: Whip) -> None:
    await until(lambda: w.ingest.open_sessions == 0 and not whip_tasks())
    assert w.ingest.stats()["live_tracks"] == 0
    assert all(c.end_reason is not None for c in w.admission.calls)


async def start_whip(**overrides: Any) -> Whip:
    cfg = WhipIngestConfig(**{"listen": "127.0.0.1:0", "inactivity_timeout_ms": 1000, **overrides})
    admission, metrics = Admission(), Metrics()
    ingest = WhipIngest(cfg, admission, metrics, SystemClock(), environ={"SPOOFWATCH_WHIP_TOKEN": TOKEN})
    port = await ingest.start()
    return Whip(ingest, admission, metrics, f"http://127.0.0.1:{port}/whip")


@pytest.fixture
async def whip() -> AsyncIterator[Whip]:
    w = await start_whip()
    try:
        yield w
    finally:
        await w.ingest.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as session:
        yield session


# publishers -------------------------------------------------------------------------------------
def clip_publisher(url: str, seconds: float, params: dict[str, str] | None = None) -> tuple[WhipPublisher, Any]:
    track = _make_track_class()(load_clip_48k("marked"), seconds, LoadResult())
    return WhipPublisher(url, TOKEN, track, params=params), track


class StallingTrack(MediaStreamTrack):
    """Sends `frames` 20 ms frames of a tone, then nothing (recv blocks): a stuck publisher whose
    connection stays up."""

    kind = "audio"

    def __init__(self, frames: int) -> None:
        super().__init__()
        self._inner = _make_track_class()(load_clip_48k("marked"), 60.0, LoadResult())
        self._left = frames
        self.stalled = asyncio.Event()

    async def recv(self) -> Any:
        if self._left <= 0:
            self.stalled.set()
            await asyncio.Event().wait()  # cancelled when the sender stops
            raise MediaStreamError
        self._left -= 1
        return await self._inner.recv()


async def offer_sdp(*kinds: str, direction: str = "sendonly") -> str:
    """A real aiortc offer with one transceiver per kind."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        for kind in kinds:
            pc.addTransceiver(kind, direction=direction)
        await pc.setLocalDescription(await pc.createOffer())
        sdp: str = pc.localDescription.sdp
        return sdp
    finally:
        await pc.close()


def only_ilbc(sdp: str) -> str:
    """The offer with its audio codecs replaced by iLBC, which nobody here decodes."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("m=audio"):
            out += [" ".join([*line.split()[:3], "102"]), "a=rtpmap:102 iLBC/8000"]
        elif not re.match(r"a=(rtpmap|fmtp|rtcp-fb):", line):
            out.append(line)
    return "\r\n".join(out) + "\r\n"


# the happy path ---------------------------------------------------------------------------------
async def test_publish_then_delete(whip: Whip, http: aiohttp.ClientSession) -> None:
    pub, _ = clip_publisher(whip.url, 30.0, {"call_id": "call/42", "agent": "7"})
    try:
        assert await pub.publish(http), pub.error
        assert pub.location is not None and re.fullmatch(r"http://127\.0\.0\.1:\d+/whip/[\w-]{20,}", pub.location)
        [call] = whip.admission.calls
        assert call.info.call_id == "call_42" and call.info.ingest == "whip"
        assert call.info.metadata["agent"] == "7" and call.info.metadata["whip_session"] in pub.location
        await until(lambda: "track-0" in call.legs and call.legs["track-0"].samples >= 16000)
        # Opus decoded by libopus straight to the detector's 16 kHz, one channel taken
        assert call.legs["track-0"].rates == {16000}
        assert call.formats["track-0"].codec is Codec.OPUS
        stats = whip.ingest.stats()
        assert (stats["sessions"], stats["calls"], stats["live_tracks"]) == (1, 1, 1)
        assert await pub.delete(http) == 200
        assert call.end_reason == "delete"
        await assert_nothing_left(whip)
        # the session is gone; a repeated DELETE is still fine (idempotent), an unknown one is not
        assert await pub.delete(http) == 200
        assert pub.location is not None
        async with http.delete(pub.location[:-4] + "xxxx", headers=AUTH) as resp:
            assert resp.status == 404
    finally:
        await pub.close()


async def test_post_answer_headers(whip: Whip, http: aiohttp.ClientSession) -> None:
    sdp = await offer_sdp("audio")
    async with http.post(whip.url, data=sdp, headers={**AUTH, "Origin": "http://127.0.0.1:9108"}) as resp:
        body = await resp.text()
        assert resp.status == 201, body
        assert resp.headers["Content-Type"].startswith("application/sdp")
        assert resp.headers["Location"].startswith("/whip/")
        assert re.fullmatch(r'"[0-9a-f]+"', resp.headers["ETag"])
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert {"Location", "ETag"} <= {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert "a=candidate:" in body  # gathered before answering: no trickle
        location = resp.headers["Location"]
    # nobody connects: the answer was given, the publisher never came (inactivity ends it)
    await until(lambda: whip.admission.calls and whip.admission.calls[0].end_reason is not None)
    assert whip.admission.calls[0].end_reason == "inactivity"
    await assert_nothing_left(whip)
    async with http.delete(whip.url.rsplit("/whip", 1)[0] + location, headers=AUTH) as resp:
        assert resp.status == 200  # it ended by itself, recently: a late DELETE is not an error
        assert "already ended (inactivity)" in await resp.text()


async def test_cors_preflight(whip: Whip, http: aiohttp.ClientSession) -> None:
    headers = {"Origin": "http://127.0.0.1:9108", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization, content-type"}
    async with http.options(whip.url, headers=headers) as resp:
        assert resp.status == 204
        h = resp.headers
        assert h["Access-Control-Allow-Origin"] == "*"
        assert {"POST", "DELETE", "OPTIONS"} <= {m.strip() for m in h["Access-Control-Allow-Methods"].split(",")}
        allowed = {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type"} <= allowed
        assert {"Location", "ETag"} <= {x.strip() for x in h["Access-Control-Expose-Headers"].split(",")}
        assert h["Accept-Post"] == "application/sdp"
    async with http.options(whip.url + "/anything", headers=headers) as resp:
        assert resp.status == 204 and "DELETE" in resp.headers["Access-Control-Allow-Methods"]


async def test_one_origin_only_when_configured(http: aiohttp.ClientSession) -> None:
    w = await start_whip(cors_allow_origin="http://ops.example.com")
    try:
        async with http.options(w.url, headers={"Origin": "http://ops.example.com"}) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "http://ops.example.com"
            assert resp.headers["Vary"] == "Origin"
    finally:
        await w.ingest.close()


# refusals ---------------------------------------------------------------------------------------
BAD_SDP = "v=0\r\nthis is not sdp\r\n"


@pytest.mark.parametrize(("case", "status", "reason", "header"), [
    ("malformed", 400, "bad_sdp", None),
    ("not_utf8", 400, "bad_sdp", None),
    ("video_only", 422, "no_audio", None),
    ("audio_recvonly", 422, "no_audio", None),
    ("no_token", 401, "unauthorized", "WWW-Authenticate"),
    ("wrong_token", 401, "unauthorized", "WWW-Authenticate"),
    ("wrong_type", 415, "bad_content_type", "Accept-Post"),
    ("ilbc_only", 406, "unsupported_codec", None),
    ("bad_metadata", 400, "bad_metadata", None),
    ("too_large", 413, "too_large", None),
])
async def test_bad_post_refused_and_leaks_nothing(whip: Whip, http: aiohttp.ClientSession, case: str, status: int,
                                                  reason: str, header: str | None) -> None:
    audio = await offer_sdp("audio")
    body: str | bytes = {
        "malformed": BAD_SDP, "not_utf8": b"v=0\r\n\xff\xfe", "video_only": await offer_sdp("video"),
        "audio_recvonly": await offer_sdp("audio", direction="recvonly"), "ilbc_only": only_ilbc(audio),
        "too_large": audio + "a=x-pad:" + "x" * 70000 + "\r\n",
    }.get(case, audio)
    headers = dict(AUTH)
    url = whip.url
    if case == "no_token":
        del headers["Authorization"]
    elif case == "wrong_token":
        headers["Authorization"] = "Bearer nope"
    elif case == "wrong_type":
        headers["Content-Type"] = "text/plain"
    elif case == "bad_metadata":
        url += "?bad%20key=1"
    async with http.post(url, data=body, headers=headers) as resp:
        text = await resp.text()
        assert resp.status == status, text
        assert resp.headers["Access-Control-Allow-Origin"] == "*"  # a browser can read why
        if header is not None:
            assert header in resp.headers
    assert whip.drops(reason) == 1
    if case == "ilbc_only":
        assert "opus/48000/2" in text and "PCMU/8000" in text  # the list we take
    if case in ("video_only", "audio_recvonly"):
        assert "no audio" in text
    assert whip.admission.calls == []
    await assert_nothing_left(whip)


async def test_patch_is_405_with_allow(whip: Whip, http: aiohttp.ClientSession) -> None:
    for url, allow in ((whip.url + "/someid", "DELETE"), (whip.url, "POST")):
        async with http.patch(url, data="a=end-of-candidates\r\n",
                              headers={**AUTH, "Content-Type": "application/trickle-ice-sdpfrag"}) as resp:
            assert resp.status == 405
            assert allow in resp.headers["Allow"]


async def test_delete_unknown_and_unauthorised(whip: Whip, http: aiohttp.ClientSession) -> None:
    async with http.delete(whip.url + "/does-not-exist", headers=AUTH) as resp:
        assert resp.status == 404
    assert whip.drops("unknown_session") == 1
    async with http.delete(whip.url + "/does-not-exist") as resp:
        assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_too_many_sessions_is_503_with_retry_after(http: aiohttp.ClientSession) -> None:
    w = await start_whip(max_calls=1)
    pub, _ = clip_publisher(w.url, 30.0)
    try:
        assert await pub.publish(http), pub.error
        async with http.post(w.url, data=await offer_sdp("audio"), headers=AUTH) as resp:
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) > 0
        assert w.refused("ingest_max_calls") == 1
        assert len(w.admission.calls) == 1
        assert await pub.delete(http) == 200
        await assert_nothing_left(w)
    finally:
        await pub.close()
        await w.ingest.close()


async def test_admission_refusal_closes_the_peer_connection(whip: Whip, http: aiohttp.ClientSession) -> None:
    whip.admission.refuse = "max_calls"
    async with http.post(whip.url, data=await offer_sdp("audio"), headers=AUTH) as resp:
        assert resp.status == 503 and "Retry-After" in resp.headers
    await assert_nothing_left(whip)


async def test_same_call_id_twice_gets_its_own_id(whip: Whip, http: aiohttp.ClientSession) -> None:
    pubs = [clip_publisher(whip.url, 30.0, {"call_id": "dup"})[0] for _ in range(2)]
    try:
        for pub in pubs:
            assert await pub.publish(http), pub.error
        ids = [c.info.call_id for c in whip.admission.calls]
        assert ids[0] == "dup" and ids[1].startswith("dup:") and len(set(ids)) == 2
        for pub in pubs:
            assert await pub.delete(http) == 200
        await assert_nothing_left(whip)
    finally:
        for pub in pubs:
            await pub.close()


# publishers that go away ------------------------------------------------------------------------
async def test_stalled_publisher_ends_on_inactivity(whip: Whip, http: aiohttp.ClientSession) -> None:
    track = StallingTrack(frames=25)
    pub = WhipPublisher(whip.url, TOKEN, track)
    try:
        assert await pub.publish(http), pub.error
        [call] = whip.admission.calls
        await until(lambda: track.stalled.is_set())
        assert pub.pc.connectionState == "connected"  # it never left: only its audio stopped
        await until(lambda: call.end_reason is not None)
        assert call.end_reason == "inactivity"
        assert call.legs["track-0"].samples > 0  # what came before the stall reached the leg (batch flushed)
        await assert_nothing_left(whip)
    finally:
        await pub.close()


async def test_vanished_publisher_ends_its_call(whip: Whip, http: aiohttp.ClientSession) -> None:
    pub, _ = clip_publisher(whip.url, 30.0)
    try:
        assert await pub.publish(http), pub.error
        [call] = whip.admission.calls
        await until(lambda: "track-0" in call.legs and call.legs["track-0"].samples > 0)
        await pub.vanish()  # gone without DELETE
        # ICE/DTLS teardown or the inactivity timeout, whichever the daemon sees first
        await until(lambda: call.end_reason is not None, timeout=1.0 + 5.0)
        assert call.end_reason in ("inactivity", "pc_closed", "ice_failed", "tracks_ended")
        print("vanished publisher: call ended with", call.end_reason)
        await assert_nothing_left(whip)
        assert await pub.delete(http) == 200  # OBS closes first, then DELETEs: that is not an error
    finally:
        await pub.close()


async def test_close_ends_running_sessions(http: aiohttp.ClientSession) -> None:
    w = await start_whip()
    pub, _ = clip_publisher(w.url, 30.0)
    try:
        assert await pub.publish(http), pub.error
        w.ingest.stop_accepting()
        async with http.post(w.url, data=await offer_sdp("audio"), headers=AUTH) as resp:
            assert resp.status == 503
        assert w.refused("shutting_down") == 1
        await w.ingest.close()
        assert [c.end_reason for c in w.admission.calls] == ["shutdown"]
        assert w.ingest.open_sessions == 0 and not whip_tasks()
    finally:
        await pub.close()
        await w.ingest.close()


# start-up ---------------------------------------------------------------------------------------
async def test_no_token_refuses_to_start() -> None:
    cfg = WhipIngestConfig(listen="127.0.0.1:0")
    ingest = WhipIngest(cfg, Admission(), Metrics(), SystemClock(), environ={})
    with pytest.raises(ConfigError, match="SPOOFWATCH_WHIP_TOKEN is not set"):
        await ingest.start()
    await ingest.close()


async def test_dev_token_warns(caplog: pytest.LogCaptureFixture) -> None:
    cfg = WhipIngestConfig(listen="127.0.0.1:0")
    ingest = WhipIngest(cfg, Admission(), Metrics(), SystemClock(), environ={"SPOOFWATCH_WHIP_TOKEN": DEV_TOKEN})
    await ingest.start()
    try:
        assert any(r.levelname == "WARNING" and "development token" in r.getMessage() for r in caplog.records)
        assert DEV_TOKEN in " ".join(r.getMessage() for r in caplog.records)  # public by design, not a secret
    finally:
        await ingest.close()


async def test_leg_that_cannot_open_drops_its_audio_once_counted(whip: Whip, http: aiohttp.ClientSession) -> None:
    whip.admission.explode_legs = True
    pub, _ = clip_publisher(whip.url, 30.0)
    try:
        assert await pub.publish(http), pub.error
        frames = {"ingest": "whip"}
        await until(lambda: (whip.metrics.registry.get_sample_value("spoofwatch_frames_received_total", frames)
                             or 0) >= 30)  # several 100 ms batches went by
        assert whip.drops("leg_open_failed") == 1  # tried once, not once per batch
        assert await pub.delete(http) == 200
        assert whip.admission.calls[0].end_reason == "delete"
        await assert_nothing_left(whip)
    finally:
        await pub.close()
