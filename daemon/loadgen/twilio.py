"""Twilio Media Streams load generator: plays Twilio-shaped calls into a daemon over real websockets.

Each call is one websocket speaking exactly what Twilio sends for `<Start><Stream track=…>`:
`connected`, `start` (callSid CA…, streamSid MZ…, tracks, customParameters, mediaFormat μ-law
8 kHz mono), 20 ms μ-law frames (160 bytes, base64) per track with `sequenceNumber` counting every
message of the stream, `media.chunk` counting per track and `media.timestamp` in ms since the stream
started, then `stop`. With both tracks the frames are interleaved on the one socket, as Twilio does.

In real time, frames go out on an absolute schedule (frame i is due at start + i·20 ms), so a late
wake-up never accumulates into drift; how late each frame went out is measured and reported.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
import sys
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

FRAME_MS = 20
FRAME_BYTES = 160  # μ-law 8 kHz: 1 byte per sample
ULAW_SILENCE = b"\xff"
#: a frame sent more than one frame period after it was due counts as late
LATE_AFTER_S = FRAME_MS / 1000
BUILTIN_CLIPS = {"clean": "speech_clean_16k.wav", "marked": "speech_marked_16k.wav"}


@dataclass
class LoadResult:
    calls: int = 0
    calls_ok: int = 0
    frames_sent: int = 0  # media messages, over all tracks and calls
    late_frames: int = 0
    max_lateness_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    call_sids: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        lines = [
            f"calls: {self.calls_ok}/{self.calls} completed in {self.elapsed_s:.1f} s",
            f"frames sent: {self.frames_sent}",
            f"late frames (> {LATE_AFTER_S * 1000:.0f} ms after due): {self.late_frames}, "
            f"max lateness {self.max_lateness_s * 1000:.1f} ms",
        ]
        lines += [f"error: {e}" for e in self.errors[:20]]
        return "\n".join(lines)


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _frames(ulaw: bytes) -> list[bytes]:
    """Cut into 160-byte frames; the last one is padded with μ-law silence, as a real call would be."""
    out = [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
    if out and len(out[-1]) < FRAME_BYTES:
        out[-1] = out[-1] + ULAW_SILENCE * (FRAME_BYTES - len(out[-1]))
    return out


def twilio_messages(
    tracks: dict[str, bytes],
    *,
    call_sid: str,
    stream_sid: str,
    account_sid: str = "AC" + "0" * 32,
    params: dict[str, str] | None = None,
) -> tuple[list[str], list[list[str]], str]:
    """(opening messages, media messages grouped per 20 ms tick, stop message) for one stream.

    `tracks` maps "inbound"/"outbound" to μ-law bytes. Tracks shorter than the longest are padded with
    silence: Twilio sends every track for the whole call."""
    seq = 0

    def nxt() -> str:
        nonlocal seq
        seq += 1
        return str(seq)

    names = [t for t in ("inbound", "outbound") if t in tracks]
    framed = {t: _frames(tracks[t]) for t in names}
    n = max((len(f) for f in framed.values()), default=0)
    opening = [
        json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}),
        json.dumps({"event": "start", "sequenceNumber": nxt(), "streamSid": stream_sid, "start": {
            "accountSid": account_sid, "streamSid": stream_sid, "callSid": call_sid, "tracks": names,
            "customParameters": dict(params or {}),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}),
    ]
    ticks: list[list[str]] = []
    for i in range(n):
        tick = []
        for t in names:
            frame = framed[t][i] if i < len(framed[t]) else ULAW_SILENCE * FRAME_BYTES
            tick.append(json.dumps({"event": "media", "sequenceNumber": nxt(), "streamSid": stream_sid, "media": {
                "track": t, "chunk": str(i + 1), "timestamp": str(i * FRAME_MS),
                "payload": base64.b64encode(frame).decode("ascii")}}))
        ticks.append(tick)
    stop = json.dumps({"event": "stop", "sequenceNumber": nxt(), "streamSid": stream_sid,
                       "stop": {"accountSid": account_sid, "callSid": call_sid}})
    return opening, ticks, stop


async def _one_call(
    url: str,
    tracks: dict[str, bytes],
    *,
    delay_s: float,
    realtime: bool,
    params: dict[str, str] | None,
    result: LoadResult,
    close_timeout_s: float,
) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    call_sid = _sid("CA")
    result.call_sids.append(call_sid)
    opening, ticks, stop = twilio_messages(tracks, call_sid=call_sid, stream_sid=_sid("MZ"), params=params)
    if delay_s > 0:
        await asyncio.sleep(delay_s)
    loop = asyncio.get_running_loop()
    try:
        async with connect(url, max_size=2**20, compression=None, open_timeout=10,
                           close_timeout=close_timeout_s) as ws:
            for msg in opening:
                await ws.send(msg)
            t0 = loop.time()
            for i, tick in enumerate(ticks):
                if realtime:
                    due = t0 + i * FRAME_MS / 1000
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    late = loop.time() - due
                    if late > LATE_AFTER_S:
                        result.late_frames += len(tick)
                    result.max_lateness_s = max(result.max_lateness_s, late)
                for msg in tick:
                    await ws.send(msg)
                result.frames_sent += len(tick)
            await ws.send(stop)
            # The daemon closes after `stop`; wait for it (bounded by close_timeout) so the call is
            # fully handed over before we report it done.
            try:
                async with asyncio.timeout(close_timeout_s):
                    await ws.wait_closed()
            except TimeoutError:
                pass
        result.calls_ok += 1
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        result.errors.append(f"{call_sid}: closed by the daemon: {rcvd.code} {rcvd.reason}" if rcvd
                             else f"{call_sid}: connection lost")
    except InvalidStatus as exc:
        result.errors.append(f"{call_sid}: upgrade refused: HTTP {exc.response.status_code}")
    except (OSError, TimeoutError) as exc:
        result.errors.append(f"{call_sid}: {type(exc).__name__}: {exc}")


async def run_twilio_calls(
    url: str,
    *,
    calls: int,
    inbound_pcm8k: npt.NDArray[np.int16] | None,
    outbound_pcm8k: npt.NDArray[np.int16] | None = None,
    realtime: bool = True,
    params: dict[str, str] | None = None,
    ramp_s: float = 0.0,
    timeout_s: float | None = None,
) -> LoadResult:
    """Play `calls` concurrent Twilio streams to `url`; each call carries the given 8 kHz int16 audio
    on its inbound and/or outbound track (at least one). Call k starts at k·ramp_s/calls. Never
    raises for a failed call: failures are in `LoadResult.errors`. Bounded by `timeout_s` (default:
    clip length + ramp + 30 s)."""
    from daemon.audio.codecs import encode_ulaw

    tracks: dict[str, bytes] = {}
    if inbound_pcm8k is not None:
        tracks["inbound"] = encode_ulaw(inbound_pcm8k)
    if outbound_pcm8k is not None:
        tracks["outbound"] = encode_ulaw(outbound_pcm8k)
    if not tracks:
        raise ValueError("give inbound_pcm8k, outbound_pcm8k or both")
    clip_s = max(len(b) for b in tracks.values()) / 8000
    if timeout_s is None:
        timeout_s = (clip_s if realtime else 0.0) + ramp_s + 30.0
    result = LoadResult(calls=calls)
    started = time.monotonic()
    tasks = [
        asyncio.create_task(_one_call(url, tracks, delay_s=k * ramp_s / calls if calls else 0.0, realtime=realtime,
                                      params=params, result=result, close_timeout_s=5.0), name=f"loadgen-call-{k}")
        for k in range(calls)
    ]
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


# clips -------------------------------------------------------------------------------------------
def clip_path(name: str) -> Path:
    """'clean' / 'marked' → the bundled clips; anything else is a path."""
    if name in BUILTIN_CLIPS:
        return Path(__file__).resolve().parent.parent / "clips" / BUILTIN_CLIPS[name]
    return Path(name)


def load_clip_8k(name: str) -> npt.NDArray[np.int16]:
    """Read a 16-bit PCM WAV (any rate; stereo → its first channel) and resample it to 8 kHz."""
    import numpy as np
    import soxr

    path = clip_path(name)
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (got {8 * w.getsampwidth()}-bit)")
        channels, rate = w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)[:, 0]
    if rate != 8000:
        samples = soxr.resample(samples, rate, 8000)
    return np.ascontiguousarray(samples, dtype=np.int16)


# CLI ---------------------------------------------------------------------------------------------
def _param(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {value!r}")
    return key, val


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", required=True, help="daemon websocket URL, e.g. ws://127.0.0.1:8080/twilio")
    p.add_argument("--calls", type=int, default=1, help="concurrent calls (default 1)")
    p.add_argument("--clip", default="clean", help="WAV path, or a bundled clip: clean, marked (default clean)")
    p.add_argument("--track", choices=("inbound", "outbound", "both"), default="inbound",
                   help="which track(s) the stream carries, like <Stream track=…> (default inbound)")
    p.add_argument("--other-clip", default=None,
                   help="with --track both: the outbound track's clip (default: the same as --clip)")
    p.add_argument("--ramp-s", type=float, default=0.0, help="spread call starts over this many seconds")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="K=V",
                   help="a <Parameter> passed in start.customParameters (repeatable)")
    p.add_argument("--fast", action="store_true", help="send as fast as possible instead of in real time")


def main(args: argparse.Namespace) -> int:
    if args.calls < 1:
        print("--calls must be at least 1", file=sys.stderr)
        return 2
    try:
        clip = load_clip_8k(args.clip)
        other = load_clip_8k(args.other_clip) if args.other_clip else clip
    except (OSError, ValueError, EOFError, wave.Error) as exc:  # missing file, not a WAV, truncated
        print(f"cannot read clip: {exc}", file=sys.stderr)
        return 2
    inbound = clip if args.track in ("inbound", "both") else None
    outbound = (other if args.track == "both" else clip) if args.track in ("outbound", "both") else None
    params: dict[str, str] = dict(args.param)
    result = asyncio.run(run_twilio_calls(args.url, calls=args.calls, inbound_pcm8k=inbound, outbound_pcm8k=outbound,
                                          realtime=not args.fast, params=params, ramp_s=args.ramp_s))
    print(result.summary())
    return 0 if result.calls_ok == result.calls else 1
