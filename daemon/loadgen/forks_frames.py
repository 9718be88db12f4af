"""Sans-I/O frame builders for the media-fork load generator: clip samples + call parameters → the
exact frames a Telnyx, Plivo, Exotel or Vonage media stream sends (the PBX-side dialects are in
`forks_frames_pbx`, Genesys AudioHook in `forks_audiohook`).

A dialect object is built once per run from the clip(s) and options; everything call-specific is
derived from one `key` (a UUID string, 36 characters): `handshake(key)` (upgrade headers and
subprotocols), `opening(key)`, `ticks(key)` (the frames of each `tick_s` slot, in sending order),
`closing(key)`. A frame is `str` (websocket text), or `bytes` (websocket binary; raw bytes for a TCP
dialect). Only `key` varies between the calls of a run, so the driver builds `ticks` once with a
placeholder key and patches each call's key in (see `forks.TemplateTicks`): `ticks` may use the key
only verbatim (never a value derived from it) and puts it in text frames only.

These builders are written from the providers' documentation, not from our parsers: the unit tests
feed their output into `daemon.ingest.forks` and check that the server side sees the call.
"""

from __future__ import annotations

import base64
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Pcm = npt.NDArray[np.int16]

Frame = str | bytes
KEY_CHARS = 36  # str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Handshake:
    headers: dict[str, str] = field(default_factory=dict)
    subprotocols: tuple[str, ...] = ()


def derived_id(key: str, name: str) -> str:
    """A second stable id for a call (call_session_id, callId …), derived from its key."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}:{key}"))


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# audio helpers -----------------------------------------------------------------------------------
def pad_to(samples: Pcm, n: int) -> Pcm:
    import numpy as np

    if len(samples) >= n:
        return samples
    return np.concatenate([samples, np.zeros(n - len(samples), dtype=np.int16)])


def equalize(tracks: list[Pcm], frame_samples: int) -> list[Pcm]:
    """Pad every track with silence to the longest, rounded up to whole frames (a call sends every
    track for the whole call, and a frame is never short)."""
    longest = max(len(t) for t in tracks)
    n = -(-longest // frame_samples) * frame_samples
    return [pad_to(t, n) for t in tracks]


def mix(a: Pcm, b: Pcm | None) -> Pcm:
    """The two parties mixed into one signal (what a `mixed` fork carries)."""
    import numpy as np

    if b is None:
        return a
    a, b = equalize([a, b], 1)
    return np.clip((a.astype(np.int32) + b.astype(np.int32)) // 2, -32768, 32767).astype(np.int16)


def interleave(a: Pcm, b: Pcm) -> Pcm:
    """Stereo s16: left = a (caller), right = b (callee)."""
    import numpy as np

    a, b = equalize([a, b], 1)
    return np.ascontiguousarray(np.stack([a, b], axis=1).reshape(-1))


def encode(samples: Pcm, codec: str) -> bytes:
    """'pcmu' | 'pcma' | 'l16le' | 'l16be' → bytes."""
    from daemon.audio.codecs import encode_alaw, encode_ulaw

    if codec == "pcmu":
        return encode_ulaw(samples)
    if codec == "pcma":
        return encode_alaw(samples)
    if codec == "l16le":
        return samples.astype("<i2").tobytes()
    if codec == "l16be":
        return samples.astype(">i2").tobytes()
    raise ValueError(f"codec {codec!r}")


def cut(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def dtmf_ticks(digits: str, n_ticks: int, tick_s: float, every_s: float = 0.5) -> dict[int, str]:
    """Digit k goes out at (k+1)·every_s into the call, closer together when the call is too short
    for that (one digit per tick at most; digits beyond the call's ticks are not sent)."""
    digits = digits[: max(0, n_ticks - 1)]
    if not digits:
        return {}
    spacing = max(1, min(round(every_s / tick_s), n_ticks // (len(digits) + 1)))
    return {(k + 1) * spacing: d for k, d in enumerate(digits)}


class ForkDialect:
    """Base: one run's dialect. Subclasses fill `_opening`, `_tick`, `_closing`."""

    name: ClassVar[str] = ""
    transport: ClassVar[str] = "ws"  # "ws" or "tcp"
    tick_s: float = 0.02
    n_ticks: int = 0

    def call_id(self, key: str) -> str:
        """What the server's parser must report as CallStart.call_id for this call."""
        return key

    def handshake(self, key: str) -> Handshake:
        return Handshake()

    def opening(self, key: str) -> list[Frame]:
        return []

    def ticks(self, key: str) -> list[list[Frame]]:
        raise NotImplementedError

    def closing(self, key: str) -> list[Frame]:
        return []

    def script(self, key: str) -> list[Frame]:
        """Every frame of one call in sending order (tests)."""
        return [*self.opening(key), *(f for tick in self.ticks(key) for f in tick), *self.closing(key)]


# Telnyx ------------------------------------------------------------------------------------------
TELNYX_CODECS = {"PCMU": "pcmu", "PCMA": "pcma", "L16": "l16be"}  # L16 = RTP payload: network byte order


class Telnyx(ForkDialect):
    """Telnyx media streaming: snake_case JSON, base64 RTP payloads per track, `sequence_number`
    over every message, `media.chunk` per track, frames sent out of order within blocks of `reorder`
    (the order on the wire is not guaranteed, Telnyx says)."""

    name = "telnyx"

    def __init__(self, tracks: dict[str, Pcm], *, codec: str = "PCMU", rate: int = 8000, reorder: int = 4,
                 auth_token: str | None = None, params: dict[str, str] | None = None, dtmf: str = "",
                 seed: int = 14) -> None:
        if codec not in TELNYX_CODECS:
            raise ValueError(f"Telnyx codec {codec!r}: one of {sorted(TELNYX_CODECS)}")
        self.codec, self.rate = codec, rate if codec == "L16" else 8000
        self.auth_token, self.params, self.dtmf = auth_token, dict(params or {}), dtmf
        fs = self.rate // 50
        names = [t for t in ("inbound", "outbound") if t in tracks]
        padded = equalize([tracks[t] for t in names], fs)
        self.frames = {t: cut(encode(p, TELNYX_CODECS[codec]), len(encode(p[:fs], TELNYX_CODECS[codec])))
                       for t, p in zip(names, padded, strict=True)}
        self.n_ticks = len(padded[0]) // fs
        self.order = reorder_order(self.n_ticks, reorder, random.Random(seed))

    def call_id(self, key: str) -> str:
        return "v3:" + key

    def handshake(self, key: str) -> Handshake:
        return Handshake({"x-telnyx-streaming-auth-token": self.auth_token} if self.auth_token else {})

    def opening(self, key: str) -> list[Frame]:
        connected: dict[str, object] = {"event": "connected", "version": "1.0.0"}
        if self.auth_token:
            connected["x-telnyx-streaming-auth-token"] = self.auth_token
        start = {"event": "start", "sequence_number": "1", "stream_id": key, "start": {
            "call_control_id": self.call_id(key), "call_session_id": derived_id(key, "session"),
            "from": "+13125550100", "to": "+13125550199", "client_state": _b64(b"spoofwatch-loadgen"),
            "custom_parameters": self.params,
            "media_format": {"encoding": self.codec, "sample_rate": self.rate, "channels": 1}}}
        return [_dumps(connected), _dumps(start)]

    def ticks(self, key: str) -> list[list[Frame]]:
        seq = 1
        dtmf = dtmf_ticks(self.dtmf, self.n_ticks, self.tick_s)
        out: list[list[Frame]] = []
        for i, j in enumerate(self.order):
            tick: list[Frame] = []
            for track, frames in self.frames.items():
                seq += 1
                tick.append(_dumps({"event": "media", "sequence_number": str(seq), "stream_id": key, "media": {
                    "track": track, "chunk": str(j + 1), "timestamp": str(j * 20), "payload": _b64(frames[j])}}))
            if i in dtmf:
                seq += 1
                tick.append(_dumps({"event": "dtmf", "sequence_number": str(seq), "stream_id": key,
                                    "dtmf": {"digit": dtmf[i]}}))
            out.append(tick)
        return out

    def closing(self, key: str) -> list[Frame]:
        seq = 2 + self.n_ticks * len(self.frames) + len(dtmf_ticks(self.dtmf, self.n_ticks, self.tick_s))
        return [_dumps({"event": "stop", "sequence_number": str(seq), "stream_id": key,
                        "stop": {"call_control_id": self.call_id(key), "reason": "hangup"}})]


def reorder_order(n: int, window: int, rng: random.Random) -> list[int]:
    """Frame indexes in sending order: shuffled within consecutive blocks of `window` frames (so a
    receiver with a reorder window ≥ `window` restores the order losing nothing)."""
    order = list(range(n))
    if window > 1:
        for start in range(0, n, window):
            block = order[start : start + window]
            rng.shuffle(block)
            order[start : start + window] = block
    return order


# Plivo -------------------------------------------------------------------------------------------
class Plivo(ForkDialect):
    """Plivo `<Stream>`: camelCase JSON, integer `sequenceNumber`, `extra_headers` as `k=v;k=v`,
    `audio/x-mulaw;rate=8000` or `audio/x-l16` (little-endian) 8/16 kHz. Plivo sends no stop: the
    call ends when the socket closes."""

    name = "plivo"

    def __init__(self, tracks: dict[str, Pcm], *, codec: str = "mulaw", rate: int = 8000,
                 params: dict[str, str] | None = None, dtmf: str = "") -> None:
        if codec not in ("mulaw", "l16"):
            raise ValueError(f"Plivo codec {codec!r}: mulaw or l16")
        self.rate = 8000 if codec == "mulaw" else rate
        self.encoding = "audio/x-mulaw" if codec == "mulaw" else "audio/x-l16"
        self.extra_headers = ";".join(f"{k}={v}" for k, v in (params or {}).items())
        self.dtmf = dtmf
        fs = self.rate // 50
        self.names = [t for t in ("inbound", "outbound") if t in tracks]
        padded = equalize([tracks[t] for t in self.names], fs)
        wire = "pcmu" if codec == "mulaw" else "l16le"
        self.frames = {t: cut(encode(p, wire), len(encode(p[:fs], wire))) for t, p in zip(self.names, padded,
                                                                                        strict=True)}
        self.n_ticks = len(padded[0]) // fs

    def call_id(self, key: str) -> str:
        return derived_id(key, "call")

    def opening(self, key: str) -> list[Frame]:
        return [_dumps({"event": "start", "sequenceNumber": 1, "start": {
            "callId": self.call_id(key), "streamId": key, "accountId": "MA" + "0" * 18, "tracks": self.names,
            "mediaFormat": {"encoding": self.encoding, "sampleRate": self.rate}},
            "extra_headers": self.extra_headers})]

    def ticks(self, key: str) -> list[list[Frame]]:
        seq = 1
        dtmf = dtmf_ticks(self.dtmf, self.n_ticks, self.tick_s)
        out: list[list[Frame]] = []
        for i in range(self.n_ticks):
            tick: list[Frame] = []
            for track, frames in self.frames.items():
                seq += 1
                tick.append(_dumps({"event": "media", "sequenceNumber": seq, "streamId": key, "media": {
                    "track": track, "timestamp": str(i * 20), "chunk": i + 1, "payload": _b64(frames[i])},
                    "extra_headers": self.extra_headers}))
            if i in dtmf:
                seq += 1
                tick.append(_dumps({"event": "dtmf", "sequenceNumber": seq, "streamId": key,
                                    "dtmf": {"track": "inbound", "digit": dtmf[i], "timestamp": str(i * 20)}}))
            out.append(tick)
        return out


# Exotel ------------------------------------------------------------------------------------------
class Exotel(ForkDialect):
    """Exotel AgentStream: snake_case JSON with numbers as strings (`sample_rate` "8000"), raw s16le
    base64 in ~100 ms chunks, the caller's voice only, `stop` at the end."""

    name = "exotel"
    tick_s = 0.1

    def __init__(self, caller: Pcm, *, rate: int = 8000, params: dict[str, str] | None = None,
                 dtmf: str = "") -> None:
        self.rate, self.params, self.dtmf = rate, dict(params or {}), dtmf
        fs = rate // 10
        (padded,) = equalize([caller], fs)
        self.chunks = cut(encode(padded, "l16le"), 2 * fs)
        self.n_ticks = len(self.chunks)

    def call_id(self, key: str) -> str:
        return derived_id(key, "call")

    def opening(self, key: str) -> list[Frame]:
        return [_dumps({"event": "connected"}), _dumps({
            "event": "start", "sequence_number": "1", "stream_sid": key, "start": {
                "stream_sid": key, "call_sid": self.call_id(key), "account_sid": "spoofwatch-loadgen",
                "from": "+919800000001", "to": "+918000000002", "custom_parameters": self.params,
                "media_format": {"encoding": "audio/x-raw", "sample_rate": str(self.rate), "bit_rate": "16"}}})]

    def ticks(self, key: str) -> list[list[Frame]]:
        seq = 1
        dtmf = dtmf_ticks(self.dtmf, self.n_ticks, self.tick_s)
        out: list[list[Frame]] = []
        for i, chunk in enumerate(self.chunks):
            seq += 1
            tick: list[Frame] = [_dumps({"event": "media", "sequence_number": str(seq), "stream_sid": key,
                                         "media": {"chunk": str(i + 1), "timestamp": str(i * 100),
                                                   "payload": _b64(chunk)}})]
            if i in dtmf:
                seq += 1
                tick.append(_dumps({"event": "dtmf", "sequence_number": str(seq), "stream_sid": key,
                                    "dtmf": {"digit": dtmf[i], "duration": "100"}}))
            out.append(tick)
        return out

    def closing(self, key: str) -> list[Frame]:
        seq = 2 + self.n_ticks + len(dtmf_ticks(self.dtmf, self.n_ticks, self.tick_s))
        return [_dumps({"event": "stop", "sequence_number": str(seq), "stream_sid": key,
                        "stop": {"call_sid": self.call_id(key), "account_sid": "spoofwatch-loadgen",
                                 "reason": "callended"}})]


# Vonage ------------------------------------------------------------------------------------------
class Vonage(ForkDialect):
    """Vonage websockets: a `websocket:connected` text frame (content type + the NCCO headers, the
    call id among them as `call_uuid`), then binary 20 ms L16 little-endian of the mixed
    conversation; the socket closing ends the call."""

    name = "vonage"

    def __init__(self, mixed: Pcm, *, rate: int = 16000, params: dict[str, str] | None = None,
                 dtmf: str = "") -> None:
        self.rate, self.params, self.dtmf = rate, dict(params or {}), dtmf
        fs = rate // 50
        (padded,) = equalize([mixed], fs)
        self.frames = cut(encode(padded, "l16le"), 2 * fs)
        self.n_ticks = len(self.frames)

    def opening(self, key: str) -> list[Frame]:
        return [_dumps({"event": "websocket:connected", "content-type": f"audio/l16;rate={self.rate}",
                        "call_uuid": key, **self.params})]

    def ticks(self, key: str) -> list[list[Frame]]:
        dtmf = dtmf_ticks(self.dtmf, self.n_ticks, self.tick_s)
        return [[f, *([_dumps({"event": "websocket:dtmf", "digit": dtmf[i], "duration": 260})] if i in dtmf else [])]
                for i, f in enumerate(self.frames)]
