"""Twilio Media Streams load generator: plays Twilio-shaped calls into a daemon over real websockets.

Each call is one websocket speaking exactly what Twilio sends for `<Start><Stream track=…>`:
`connected`, `start` (callSid CA…, streamSid MZ…, tracks, customParameters, mediaFormat μ-law
8 kHz mono), 20 ms μ-law frames (160 bytes, base64) per track with `sequenceNumber` counting every
message of the stream, `media.chunk` counting per track and `media.timestamp` in ms since the stream
started, then `stop`. With both tracks the frames are interleaved on the one socket, as Twilio does.

Every upgrade is signed like Twilio's: X-Twilio-Signature = base64(HMAC-SHA1(auth token, URL)), over
the exact URL dialled (a `ws://` URL is signed as its `wss://` twin, the scheme Twilio always uses and
the daemon rebuilds; `--signed-url` overrides it for a daemon behind a proxy with `public_base_url`).
The token is `--auth-token`, else $TWILIO_AUTH_TOKEN, else the local development token that `make run`
gives the daemon, so the two work together out of the box.

In real time, frames go out on an absolute schedule per call (frame i is due at start + i·20 ms), so a
late wake-up never accumulates into drift; how late each frame went out is measured and reported.
One pacer timer serves every call and the sockets are websockets' sans-I/O protocol over plain
asyncio transports, so hundreds of calls cost little CPU next to the daemon being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import secrets
import sys
import wave
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.ingest.twilio.signature import DEV_AUTH_TOKEN, SIGNATURE_HEADER, twilio_signature, url_as_twilio_signs
from daemon.loadgen.pacing import PacedCall, Pacer, failure_text, run_calls, verdict
from daemon.loadgen.wsclient import FRAME_MS, CallSocket, LoadResult, MediaFrames, client_frame

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

FRAME_BYTES = 160  # μ-law 8 kHz: 1 byte per sample
ULAW_SILENCE = b"\xff"
BUILTIN_CLIPS = {"clean": "speech_clean_16k.wav", "marked": "speech_marked_16k.wav"}


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
    frames: MediaFrames,
    pacer: Pacer,
    params: dict[str, str] | None,
    result: LoadResult,
    close_timeout_s: float,
    headers: dict[str, str] | None = None,
) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.uri import parse_uri

    call_sid = _sid("CA")
    result.call_sids.append(call_sid)
    stream_sid = _sid("MZ")
    # media messages come ready from `frames` (prepared once per clip position); only the opening is per call
    opening, _, _ = twilio_messages(dict.fromkeys(tracks, b""), call_sid=call_sid, stream_sid=stream_sid,
                                    params=params)
    stop = json.dumps({"event": "stop", "sequenceNumber": str(frames.next_seq), "streamSid": stream_sid,
                       "stop": {"accountSid": "AC" + "0" * 32, "callSid": call_sid}})
    loop = asyncio.get_running_loop()
    uri = parse_uri(url)
    sock: CallSocket | None = None
    try:
        if len(stream_sid) != frames.sid_len:
            raise ValueError(f"streamSid must be {frames.sid_len} bytes, got {len(stream_sid)}")
        async with asyncio.timeout(10):
            _, sock = await loop.create_connection(lambda: CallSocket(url, headers), uri.host, uri.port)
            await sock.opened
        sock.send(opening)
        call = PacedCall(sock, frames, stream_sid.encode(), loop.time(), stop=client_frame(stop.encode()))
        # the daemon closes after `stop` (or earlier, refusing or failing the call)
        await pacer.play(call, sock.closed)
        try:
            async with asyncio.timeout(close_timeout_s):
                await asyncio.shield(sock.closed)
        except TimeoutError:
            sock.close()  # the daemon did not close: do it ourselves
        result.record_call(call_sid, verdict(sock, call.sent, frames.n, "frames"))
    except (InvalidStatus, OSError, TimeoutError, ValueError) as exc:  # ValueError: a handshake the daemon garbled
        result.record_call(call_sid, failure_text(exc))
    finally:
        if sock is not None and not sock.closed.done():
            sock.abort()


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
    auth_token: str | None = None,
    signed_url: str | None = None,
) -> LoadResult:
    """Play `calls` concurrent Twilio streams to `url`; each call carries the given 8 kHz int16 audio
    on its inbound and/or outbound track (at least one). Call k starts at k·ramp_s/calls. Never
    raises for a failed call: failures are in `LoadResult.errors`. Bounded by `timeout_s` (default:
    clip length + ramp + 30 s). With `auth_token`, every upgrade carries X-Twilio-Signature over
    `signed_url` (default: `url` as Twilio signs it, see `url_as_twilio_signs`); None: no signature."""
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
    headers: dict[str, str] = {}
    if auth_token is not None:  # signed as Twilio signs: over the URL dialled, as wss://
        headers[SIGNATURE_HEADER] = twilio_signature(auth_token, signed_url or url_as_twilio_signs(url))
    names = [t for t in ("inbound", "outbound") if t in tracks]  # the order Twilio interleaves them in
    frames = MediaFrames({t: _frames(tracks[t]) for t in names}, sid_len=len(_sid("MZ")))

    async def one_call(_k: int, result: LoadResult, pacer: Pacer) -> None:
        await _one_call(url, tracks, frames=frames, pacer=pacer, params=params, result=result, close_timeout_s=5.0,
                        headers=headers)

    return await run_calls(one_call, calls=calls, realtime=realtime, ramp_s=ramp_s, timeout_s=timeout_s)


# clips -------------------------------------------------------------------------------------------
def clip_path(name: str) -> Path:
    """'clean' / 'marked' → the bundled clips; anything else is a path."""
    if name in BUILTIN_CLIPS:
        return Path(__file__).resolve().parent.parent / "clips" / BUILTIN_CLIPS[name]
    return Path(name)


def load_clip(name: str, rate: int) -> npt.NDArray[np.int16]:
    """Read a 16-bit PCM WAV (path, or a bundled clip; any rate; stereo → its first channel) and
    resample it to `rate`."""
    import numpy as np
    import soxr

    path = clip_path(name)
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (got {8 * w.getsampwidth()}-bit)")
        channels, clip_rate = w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    samples = np.frombuffer(raw, dtype="<i2").reshape(-1, channels)[:, 0]
    if clip_rate != rate:
        samples = soxr.resample(samples, clip_rate, rate)
    return np.ascontiguousarray(samples, dtype=np.int16)


def load_clip_8k(name: str) -> npt.NDArray[np.int16]:
    """`load_clip` at 8 kHz, the rate of Twilio's μ-law."""
    return load_clip(name, 8000)


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
    p.add_argument("--auth-token", default=None,
                   help="Twilio auth token the upgrade is signed with (X-Twilio-Signature); default: "
                        f"$TWILIO_AUTH_TOKEN, else the local development token {DEV_AUTH_TOKEN!r} that `make run` "
                        "gives the daemon")
    p.add_argument("--signed-url", default=None,
                   help="URL to sign instead of --url (ws:// is signed as wss://, as Twilio dials), e.g. the "
                        "daemon's public_base_url + path when it sits behind a proxy")
    p.add_argument("--no-signature", action="store_true", help="send no X-Twilio-Signature at all")


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
    token = None if args.no_signature else (args.auth_token or os.environ.get("TWILIO_AUTH_TOKEN") or DEV_AUTH_TOKEN)
    result = asyncio.run(run_twilio_calls(args.url, calls=args.calls, inbound_pcm8k=inbound, outbound_pcm8k=outbound,
                                          realtime=not args.fast, params=params, ramp_s=args.ramp_s,
                                          auth_token=token, signed_url=args.signed_url))
    print(result.summary())
    return 0 if result.calls_ok == result.calls else 1
