"""WHIP load generator: aiortc publishers that POST an SDP offer to a daemon's WHIP endpoint and
send a clip as Opus over a real WebRTC connection (ICE, DTLS-SRTP), then DELETE the session.

Each call is one RTCPeerConnection with one sendonly audio track. The track (`ClipTrack`) hands
aiortc 20 ms frames of 48 kHz mono s16 on an absolute schedule of the event loop's clock (frame i
is due at start + i·20 ms), so a late wake-up never accumulates into drift; how late each frame was
handed over is measured and reported. After the clip (or --duration-s) the session is DELETEd, the
daemon ends the call and sends its summary. Bounded: at most --calls publishers, each bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import os
import sys
import time
import wave
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin

from daemon.loadgen.wsclient import LoadResult

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

RATE = 48000
FRAME_SAMPLES = 960  # 20 ms at 48 kHz
FRAME_S = FRAME_SAMPLES / RATE
TOKEN_ENV = "SPOOFWATCH_WHIP_TOKEN"
#: after the clip, silence keeps flowing this long before DELETE, so the clip's last packets (in the
#: network and the daemon's jitter buffer) arrive before the call ends
TAIL_S = 0.3


def _make_track_class() -> type[Any]:
    from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
    from av import AudioFrame

    class ClipTrack(MediaStreamTrack):
        """20 ms frames of a 48 kHz mono clip (looped to `duration_s`), then silence until stopped.
        `finished` is set once the clip and TAIL_S of silence have been handed over."""

        kind = "audio"

        def __init__(self, samples: npt.NDArray[np.int16], duration_s: float, result: LoadResult) -> None:
            super().__init__()
            self._samples = samples
            self._frames_total = max(1, round(duration_s / FRAME_S))
            self._tail_frames = round(TAIL_S / FRAME_S)
            self._result = result
            self._i = 0
            self._t0: float | None = None
            self.finished = asyncio.Event()

        async def recv(self) -> AudioFrame:
            if self.readyState != "live":
                raise MediaStreamError
            loop = asyncio.get_running_loop()
            if self._t0 is None:
                self._t0 = loop.time()
            due = self._t0 + self._i * FRAME_S
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._i < self._frames_total:
                self._result.record_lateness(loop.time() - due, 1)
            frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
            frame.planes[0].update(self._chunk(self._i))
            frame.pts = self._i * FRAME_SAMPLES
            frame.sample_rate = RATE
            frame.time_base = fractions.Fraction(1, RATE)
            self._i += 1
            if self._i <= self._frames_total:
                self._result.frames_sent += 1
            elif self._i >= self._frames_total + self._tail_frames:
                self.finished.set()
            return frame

        def _chunk(self, i: int) -> bytes:
            if i >= self._frames_total:
                return bytes(FRAME_SAMPLES * 2)
            n = len(self._samples)
            start = (i * FRAME_SAMPLES) % n
            part = self._samples[start:start + FRAME_SAMPLES]
            if len(part) < FRAME_SAMPLES:  # wrap around the clip's end
                import numpy as np

                part = np.concatenate([part, self._samples[:FRAME_SAMPLES - len(part)]])
            return part.astype("<i2").tobytes()

    return ClipTrack


class WhipPublisher:
    """One WHIP publisher: `publish()` POSTs the offer and connects; `delete()` ends the session;
    `vanish()` closes the connection without DELETE (a crashed publisher). Always `close()`."""

    def __init__(self, url: str, token: str, track: Any, *, params: dict[str, str] | None = None) -> None:
        from aiortc import RTCConfiguration, RTCPeerConnection

        self.url = url + ("?" + urlencode(params) if params else "")
        self.token = token
        self.track = track
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.location: str | None = None
        self.status = 0
        self.error = ""

    async def publish(self, http: Any, timeout_s: float = 15.0) -> bool:
        """True once the answer is applied and the connection is up; else `status`/`error` say why."""
        from aiortc import RTCSessionDescription

        async with asyncio.timeout(timeout_s):
            self.pc.addTransceiver(self.track, direction="sendonly")
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


async def _one_call(url: str, token: str, samples: npt.NDArray[np.int16], *, duration_s: float, delay_s: float,
                    params: dict[str, str] | None, result: LoadResult, http: Any) -> None:
    track = _make_track_class()(samples, duration_s, result)
    pub = WhipPublisher(url, token, track, params=params)
    try:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if not await pub.publish(http):
            result.errors.append(pub.error)
            return
        result.call_sids.append(pub.location or "")
        async with asyncio.timeout(duration_s + TAIL_S + 30):
            await track.finished.wait()
        status = await pub.delete(http)
        if status == 200:
            result.calls_ok += 1
        else:
            result.errors.append(f"{pub.location}: DELETE {status}")
    except (OSError, TimeoutError) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # aiohttp.ClientError and aiortc's own: reported, never raised
        result.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            await pub.close()


async def run_whip_calls(url: str, token: str, *, calls: int, samples_48k: npt.NDArray[np.int16],
                         duration_s: float | None = None, ramp_s: float = 0.0, params: dict[str, str] | None = None,
                         timeout_s: float | None = None) -> LoadResult:
    """`calls` concurrent WHIP publishers to `url`, call k starting at k·ramp_s/calls, each sending
    `samples_48k` (looped to `duration_s`, default the clip's length) in real time, then DELETE.
    Never raises for a failed call: failures are in `LoadResult.errors`. `call_sids` holds the
    session URLs. Bounded by `timeout_s` (default duration + ramp + 45 s)."""
    import aiohttp

    if len(samples_48k) < FRAME_SAMPLES:
        raise ValueError("clip shorter than one 20 ms frame")
    duration = duration_s if duration_s is not None else len(samples_48k) / RATE
    if timeout_s is None:
        timeout_s = duration + ramp_s + 45.0
    result = LoadResult(calls=calls)
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        tasks = [asyncio.create_task(_one_call(url, token, samples_48k, duration_s=duration,
                                               delay_s=k * ramp_s / calls if calls else 0.0, params=params,
                                               result=result, http=http), name=f"loadgen-whip-{k}")
                 for k in range(calls)]
        try:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    if pending:
        result.errors.append(f"{len(pending)} calls did not finish within {timeout_s:.0f} s")
    result.elapsed_s = time.monotonic() - started
    return result


def load_clip_48k(name: str) -> npt.NDArray[np.int16]:
    """A 16-bit PCM WAV (any rate; stereo → its first channel), or a bundled clip, at 48 kHz."""
    import numpy as np
    import soxr

    from daemon.loadgen.twilio import clip_path

    path = clip_path(name)
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (got {8 * w.getsampwidth()}-bit)")
        channels, rate = w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)[:, 0]
    if rate != RATE:
        samples = soxr.resample(samples, rate, RATE)
    return np.ascontiguousarray(samples, dtype=np.int16)


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
