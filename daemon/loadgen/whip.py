"""WHIP load generator: aiortc publishers that POST an SDP offer to a daemon's WHIP endpoint and
send a clip as Opus over a real WebRTC connection (ICE, DTLS-SRTP), then DELETE the session.

Each call is one RTCPeerConnection with one sendonly audio track offering Opus only. The clip is
encoded ONCE into 20 ms Opus packets (`encode_opus`, PyAV's libopus), and every publisher's track
(`ClipTrack`) hands aiortc those ready `av.Packet`s: aiortc's `RTCRtpSender` packs a Packet as is
(`OpusEncoder.pack`: payload bytes, RTP timestamp from pts·time_base) where it would encode a Frame
in its thread pool, so a publisher costs only RTP framing and SRTP per packet, not an Opus encode.

Packets go out on an absolute schedule of the event loop's clock (packet i of a call is due at its
start + i·20 ms), so a late wake-up never accumulates into drift; every call waits on one shared
timer (`SharedPacer`) rather than a timer each, and how late each packet was handed over is measured
and reported. After the clip (or --duration-s) and TAIL_S of silence the session is DELETEd, the
daemon ends the call and sends its summary. Bounded: at most --calls publishers, each bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import gc
import heapq
import itertools
import os
import sys
import time
import wave
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin

from daemon.loadgen.wsclient import LoadResult

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
FRAME_S = FRAME_SAMPLES / RATE
TIME_BASE = fractions.Fraction(1, RATE)  # aiortc's Opus clock: a pts in it is the RTP timestamp as is
#: mono, what a browser sends for voice by default
OPUS_BITRATE = 32000
TOKEN_ENV = "SPOOFWATCH_WHIP_TOKEN"
#: after the clip, silence keeps flowing this long before DELETE, so the clip's last packets (in the
#: network and the daemon's jitter buffer) arrive before the call ends
TAIL_S = 0.3


@dataclass(frozen=True)
class OpusClip:
    """A clip as 20 ms Opus packets (publishers loop it), and one packet of silence for the tail."""

    packets: list[bytes]
    silence: bytes


def encode_opus(samples_48k: npt.NDArray[np.int16]) -> OpusClip:
    """Encode a 48 kHz mono clip once (the last frame completed from the clip's start, so it loops)."""
    import av
    import numpy as np

    def encoder() -> Any:
        codec = av.CodecContext.create("libopus", "w")
        codec.bit_rate = OPUS_BITRATE
        codec.format = "s16"
        codec.layout = "mono"
        codec.sample_rate = RATE
        codec.time_base = TIME_BASE
        codec.options = {"application": "voip"}  # libopus' default frame duration is 20 ms
        return codec

    def encode(codec: Any, pcm: npt.NDArray[np.int16]) -> list[bytes]:
        out: list[bytes] = []
        for i in range(len(pcm) // FRAME_SAMPLES):
            frame = av.AudioFrame.from_ndarray(pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES].reshape(1, -1),
                                               format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = i * FRAME_SAMPLES
            out += [bytes(p) for p in codec.encode(frame)]
        return out

    if len(samples_48k) < FRAME_SAMPLES:
        raise ValueError("clip shorter than one 20 ms frame")
    short = -len(samples_48k) % FRAME_SAMPLES
    pcm = np.concatenate([samples_48k, samples_48k[:short]]).astype(np.int16)
    codec = encoder()
    packets = encode(codec, pcm)
    packets += [bytes(p) for p in codec.encode(None)]  # the encoder's lookahead
    silence = encode(encoder(), np.zeros(5 * FRAME_SAMPLES, dtype=np.int16))[-1]
    return OpusClip(packets, silence)


class SharedPacer:
    """One timer for every publisher of a process: `wait_until(due)` gives a future that one timer
    callback resolves once `due` has passed. Wake-ups are at least MIN_GAP_S apart, so a few hundred
    publishers at random phases cost ~1000 wake-ups a second, not one per packet. Loop time."""

    MIN_GAP_S = 0.001

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def wait_until(self, due: float) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._heap, (due, next(self._order), fut))
        if self._timer is None or due < self._timer.when() - self.MIN_GAP_S:
            self._arm(loop)
        return fut

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(max(self._heap[0][0], loop.time()), self._fire, loop) if self._heap else None

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        heap, now = self._heap, loop.time()
        while heap and heap[0][0] <= now:
            fut = heapq.heappop(heap)[2]
            if not fut.done():  # a cancelled sender leaves a cancelled future
                fut.set_result(None)
        if heap:
            self._timer = loop.call_at(max(heap[0][0], now + self.MIN_GAP_S), self._fire, loop)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for _, _, fut in self._heap:
            fut.cancel()
        self._heap.clear()


def _make_track_class() -> type[Any]:
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
    from av import Packet

    class ClipTrack(MediaStreamTrack):
        """20 ms Opus packets of a clip (looped to `duration_s`), then silence until stopped; `clip` is
        an `OpusClip` (or 48 kHz mono samples, encoded here). `finished` is set once the clip and
        TAIL_S of silence have been handed over. Without a `pacer` the track has its own."""

        kind = "audio"

        def __init__(self, clip: OpusClip | npt.NDArray[np.int16], duration_s: float, result: LoadResult,
                     pacer: SharedPacer | None = None) -> None:
            super().__init__()
            self._clip = clip if isinstance(clip, OpusClip) else encode_opus(clip)
            self._frames_total = max(1, round(duration_s / FRAME_S))
            self._tail_frames = round(TAIL_S / FRAME_S)
            self._result = result
            self._pacer = pacer or SharedPacer()
            self._i = 0
            self._t0: float | None = None
            self.packets = 0  # handed over, clip and silence
            self.finished = asyncio.Event()

        async def recv(self) -> Any:
            if self.readyState != "live":
                raise MediaStreamError
            loop = asyncio.get_running_loop()
            if self._t0 is None:
                self._t0 = loop.time()
            i = self._i
            due = self._t0 + i * FRAME_S
            if due > loop.time():
                await self._pacer.wait_until(due)
            if i < self._frames_total:
                self._result.record_lateness(loop.time() - due, 1)
                packets = self._clip.packets
                packet = Packet(packets[i % len(packets)])
            else:
                packet = Packet(self._clip.silence)
            packet.pts = i * FRAME_SAMPLES
            packet.time_base = TIME_BASE
            self._i = i + 1
            self.packets += 1
            if self._i <= self._frames_total:
                self._result.frames_sent += 1
            elif self._i >= self._frames_total + self._tail_frames:
                self.finished.set()
            return packet

    return ClipTrack


class WhipPublisher:
    """One WHIP publisher: `publish()` POSTs the offer and connects; `delete()` ends the session;
    `vanish()` closes the connection without DELETE (a crashed publisher). Always `close()`.
    With `opus_only` (the default: `ClipTrack` hands Opus packets) the offer lists Opus alone."""

    def __init__(self, url: str, token: str, track: Any, *, params: dict[str, str] | None = None,
                 opus_only: bool = True) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.url = url + ("?" + urlencode(params) if params else "")
        self.token = token
        self.track = track
        self.opus_only = opus_only
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location: str | None = None
        self.status = 0
        self.error = ""

    async def publish(self, http: Any, timeout_s: float = 15.0) -> bool:
        """True once the answer is applied and the connection is up; else `status`/`error` say why."""
        from aiortc import RTCRtpSender, RTCSessionDescription

        async with asyncio.timeout(timeout_s):
            transceiver = self.pc.addTransceiver(self.track, direction="sendonly")
            if self.opus_only:  # pre-encoded packets: no other codec may be negotiated
                transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("audio").codecs
                                                 if c.mimeType.lower() == "audio/opus"])
            await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers every candidate
            headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self.token}"}
            async with http.post(self.url, data=self.pc.localDescription.sdp, headers=headers) as resp:
                self.status = resp.status
                body = await resp.text()
                if resp.status != 201:
                    self.error = f"POST {resp.status}: {body.strip()[:200]}"
                    return False
                self.location = urljoin(self.url, resp.headers["Location"])
            connected = asyncio.Event()

            def on_state() -> None:
                if self.pc.connectionState in ("connected", "failed", "closed"):
                    connected.set()

            self.pc.on("connectionstatechange", on_state)
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
            await connected.wait()
        if self.pc.connectionState != "connected":
            self.error = f"connection {self.pc.connectionState}"
            return False
        return True

    async def delete(self, http: Any) -> int:
        if self.location is None:
            return 0
        async with http.delete(self.location, headers={"Authorization": f"Bearer {self.token}"}) as resp:
            await resp.read()
            return int(resp.status)

    async def vanish(self) -> None:
        """Gone without DELETE: the daemon must notice by itself (inactivity)."""
        await self.pc.close()

    async def close(self) -> None:
        await self.pc.close()


@dataclass
class WhipLoadResult(LoadResult):
    #: Opus packets handed to aiortc, clip and silent tail: the daemon receives these less the few
    #: its jitter buffer still holds at DELETE
    packets_sent: int = 0

    def summary(self) -> str:
        lines = super().summary().split("\n")
        return "\n".join([*lines[:2], f"packets sent (clip + tail): {self.packets_sent}", *lines[2:]])


async def _one_call(url: str, token: str, clip: OpusClip, *, duration_s: float, delay_s: float,
                    params: dict[str, str] | None, result: WhipLoadResult, http: Any, pacer: SharedPacer) -> None:
    track = _make_track_class()(clip, duration_s, result, pacer)
    pub = WhipPublisher(url, token, track, params=params)
    stage = "publishing"
    try:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if not await pub.publish(http):
            result.errors.append(pub.error)
            return
        result.call_sids.append(pub.location or "")
        # what a connection keeps lives until DELETE: out of the collector's scans, whose full passes over
        # hundreds of publishers' objects took 20–60 ms and made every publisher late
        gc.freeze()
        stage = "streaming"
        async with asyncio.timeout(duration_s + TAIL_S + 30):
            await track.finished.wait()
        stage = "deleting"
        status = await pub.delete(http)
        if status == 200:
            result.calls_ok += 1
        else:
            result.errors.append(f"{pub.location}: DELETE {status}")
    except Exception as exc:  # OSError, timeouts, aiohttp.ClientError and aiortc's own: reported, never raised
        result.errors.append(f"{type(exc).__name__} while {stage}: {exc}")
    finally:
        result.packets_sent += track.packets
        with contextlib.suppress(Exception):
            await pub.close()


async def run_whip_calls(url: str, token: str, *, calls: int, samples_48k: npt.NDArray[np.int16],
                         duration_s: float | None = None, ramp_s: float = 0.0, params: dict[str, str] | None = None,
                         timeout_s: float | None = None) -> WhipLoadResult:
    """`calls` concurrent WHIP publishers to `url`, call k starting at k·ramp_s/calls, each sending
    `samples_48k` (encoded to Opus once, looped to `duration_s`, default the clip's length) in real
    time on one shared timer, then DELETE. Never raises for a failed call: failures are in
    `errors`. `call_sids` holds the session URLs. Bounded by `timeout_s` (default duration + ramp + 45 s)."""
    import aiohttp

    if len(samples_48k) < FRAME_SAMPLES:
        raise ValueError("clip shorter than one 20 ms frame")
    duration = duration_s if duration_s is not None else len(samples_48k) / RATE
    if timeout_s is None:
        timeout_s = duration + ramp_s + 45.0
    clip = encode_opus(samples_48k)
    result = WhipLoadResult(calls=calls)
    pacer = SharedPacer()
    started = time.monotonic()
    # a pool connection per publisher: hundreds of POSTs at once must not queue behind 100 sockets
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20), connector=connector) as http:
        tasks = [asyncio.create_task(_one_call(url, token, clip, duration_s=duration,
                                               delay_s=k * ramp_s / calls if calls else 0.0, params=params,
                                               result=result, http=http, pacer=pacer), name=f"loadgen-whip-{k}")
                 for k in range(calls)]
        try:
            await result.await_calls(tasks, timeout_s)
        finally:
            pacer.close()
    result.elapsed_s = time.monotonic() - started
    return result


def load_clip_48k(name: str) -> npt.NDArray[np.int16]:
    """A 16-bit PCM WAV (any rate; stereo → its first channel), or a bundled clip, at 48 kHz."""
    from daemon.loadgen.twilio import load_clip

    return load_clip(name, RATE)


# CLI ---------------------------------------------------------------------------------------------
def _param(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {value!r}")
    return key, val


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="WHIP endpoint, e.g. http://127.0.0.1:8081/whip")
    p.add_argument("--token", default=None,
                   help=f"bearer token (default: ${TOKEN_ENV}, else the local development token `make run` uses)")
    p.add_argument("--calls", type=int, default=1, help="concurrent publishers (default 1)")
    p.add_argument("--clip", default="clean", help="WAV path, or a bundled clip: clean, marked (default clean)")
    p.add_argument("--duration-s", type=float, default=None,
                   help="seconds each publisher sends (the clip loops; default: the clip's length)")
    p.add_argument("--ramp-s", type=float, default=0.0, help="spread publisher starts over this many seconds")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="K=V",
                   help="a query parameter of the WHIP URL: call_id=… names the call, the rest is call metadata "
                   "(repeatable)")


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.calls <= 10000:
        print("--calls must be between 1 and 10000", file=sys.stderr)
        return 2
    if args.duration_s is not None and not 0 < args.duration_s <= 86400:
        print("--duration-s must be between 0 and 86400", file=sys.stderr)
        return 2
    from daemon.ingest.whip.server import DEV_TOKEN

    # like `make run`: without a token of your own, the public local development one
    token = args.token or os.environ.get(TOKEN_ENV, "") or DEV_TOKEN
    try:
        samples = load_clip_48k(args.clip)
    except (OSError, ValueError, EOFError, wave.Error) as exc:
        print(f"cannot read clip: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(run_whip_calls(args.url, token, calls=args.calls, samples_48k=samples,
                                        duration_s=args.duration_s, ramp_s=args.ramp_s, params=dict(args.param)))
    print(result.summary())
    return 0 if result.calls_ok == result.calls else 1
