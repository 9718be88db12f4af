"""Helpers every fork parser shares: the problem/fatal bookkeeping, strict field readers, metadata
flattening, shared-token checks, stereo de-interleaving and the bounded pre-identity audio hold."""

from __future__ import annotations

import binascii
import hmac
import json
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from daemon.ingest.forks.events import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_PROTOCOL_ERROR,
    Audio,
    CallEnd,
    CallStart,
    DropCounts,
    ForkEvent,
    Problem,
)

DTMF_DIGITS = frozenset("0123456789*#ABCD")
#: Track names of the Twilio-shaped streams (Telnyx, Plivo, Exotel) → leg names.
TRACKS = {"inbound": "inbound", "inbound_track": "inbound", "outbound": "outbound", "outbound_track": "outbound"}
#: Metadata is bounded: at most this many keys, each value cut to this many characters.
MAX_METADATA_KEYS = 64
MAX_METADATA_VALUE_CHARS = 1024


class Bad(Exception):
    """Internal: one message field is missing or malformed (caught by the parser → counted drop)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


class Fatal(Exception):
    """Internal: the connection cannot go on (caught by the parser → fatal `Problem`, close with `close_code`)."""

    def __init__(self, reason: str, detail: str = "", close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail
        self.close_code = close_code


class ForkParserBase:
    """Bookkeeping shared by every parser: `call`, `ended`, `failed`, the drop tally, and the rule
    that too many problems before a call starts means the peer is not speaking this protocol."""

    def __init__(self, *, max_text_chars: int = 65536, max_binary_bytes: int = 262144,
                 max_problems_before_start: int = 16) -> None:
        self.max_text_chars = max_text_chars
        self.max_binary_bytes = max_binary_bytes
        self.max_problems_before_start = max_problems_before_start
        self.call: CallStart | None = None
        self.ended = False
        self.failed = False
        self.drops = DropCounts()
        self._problems_before_start = 0

    @property
    def done(self) -> bool:
        """Nothing more will be parsed (ended or failed)."""
        return self.ended or self.failed

    def _problem(self, reason: str, detail: str = "") -> list[ForkEvent]:
        self.drops.add(reason)
        if self.call is None:
            self._problems_before_start += 1
            if self._problems_before_start > self.max_problems_before_start:
                return self._fatal("too_many_errors", f"{self._problems_before_start} bad messages before "
                                   f"the call started (last: {reason})")
        return [Problem(reason, False, detail[:200])]

    def _fatal(self, reason: str, detail: str = "", close_code: int = CLOSE_PROTOCOL_ERROR) -> list[ForkEvent]:
        self.drops.add(reason)
        self.failed = True
        return [Problem(reason, True, detail[:200], close_code)]

    def _end(self, reason: str) -> list[ForkEvent]:
        if self.call is None or self.ended:
            self.ended = True
            return []
        self.ended = True
        return [CallEnd(reason)]

    def _oversize_text(self, text: str) -> list[ForkEvent] | None:
        if len(text) > self.max_text_chars:
            return self._fatal("oversize", f"{len(text)} chars > {self.max_text_chars}", CLOSE_MESSAGE_TOO_BIG)
        return None

    def _oversize_binary(self, data: bytes) -> list[ForkEvent] | None:
        if len(data) > self.max_binary_bytes:
            return self._fatal("oversize", f"{len(data)} bytes > {self.max_binary_bytes}", CLOSE_MESSAGE_TOO_BIG)
        return None

    def _unauthorized(self, detail: str) -> list[ForkEvent]:
        return self._fatal("unauthorized", detail, CLOSE_POLICY_VIOLATION)

    def _text_refused(self, text: str) -> list[ForkEvent] | None:
        """What to answer instead of parsing a text frame (nothing once done, a fatal problem when too
        big), or None: parse it."""
        if self.done:
            return []
        return self._oversize_text(text)

    def _binary_refused(self, data: bytes, *, started: bool | None = None) -> list[ForkEvent] | None:
        """What to answer instead of parsing a binary frame: nothing once done, a fatal problem when too
        big, `audio_before_start` when `started` is False, `empty_payload` when empty; None: parse it."""
        if self.done:
            return []
        too_big = self._oversize_binary(data)
        if too_big is not None:
            return too_big
        if started is False:
            return self._problem("audio_before_start", f"{len(data)} bytes")
        if not data:
            return self._problem("empty_payload", "")
        return None

    def connection_closed(self) -> list[ForkEvent]:
        """The socket closed: the call ends (`socket_closed`) unless it already has."""
        if self.done:
            return []
        return self._end("socket_closed")


def secret_skip(expected: tuple[str, str] | None, lookup: Callable[[str], object], where: str) -> frozenset[str]:
    """The in-band shared secret check: `expected` is (key, secret) or None (nothing to check);
    `lookup(key)` is the value the peer sent. Returns the keys to keep out of the metadata; raises
    `Fatal("unauthorized")` naming `where` (a format string with {} for the key) when missing or wrong."""
    if expected is None:
        return frozenset()
    key, secret = expected
    if not token_matches(secret, lookup(key)):
        raise Fatal("unauthorized", f"{where.format(key)} missing or wrong", CLOSE_POLICY_VIOLATION)
    return frozenset({key})


def load_json_object(text: str) -> dict[str, Any]:
    """A JSON object or `Bad` (invalid_json / not_object)."""
    try:
        msg = json.loads(text)
    except ValueError as exc:
        raise Bad("invalid_json", str(exc)[:80]) from None
    except RecursionError:
        raise Bad("invalid_json", "nested too deep") from None
    if not isinstance(msg, dict):
        raise Bad("not_object", type(msg).__name__)
    return msg


def get_obj(obj: Mapping[str, Any], key: str, *, required: bool = True) -> dict[str, Any]:
    value = obj.get(key)
    if value is None and not required:
        return {}
    if not isinstance(value, dict):
        raise Bad("missing_field" if value is None else "bad_field", key)
    return value


def get_str(obj: Mapping[str, Any], key: str, *, default: str | None = None) -> str:
    value = obj.get(key, default)
    if value is None:
        raise Bad("missing_field", key)
    if not isinstance(value, str):
        raise Bad("bad_field", f"{key} is {type(value).__name__}")
    return value


def get_int(obj: Mapping[str, Any], key: str, *, default: int | None = None) -> int:
    """An integer that may arrive as a JSON number or a decimal string ("8000"): both are common."""
    value = obj.get(key)
    if value is None:
        if default is None:
            raise Bad("missing_field", key)
        return default
    if isinstance(value, bool):
        raise Bad("bad_field", f"{key}={value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 15:
        return int(value)
    raise Bad("bad_field", f"{key}={value!r}"[:60])


def b64_payload(value: object, key: str = "payload") -> bytes:
    if not isinstance(value, str):
        raise Bad("missing_field" if value is None else "bad_field", key)
    try:
        # strict: only the base64 alphabet with correct padding
        payload = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError) as exc:
        raise Bad("bad_base64", str(exc)[:80]) from None
    if not payload:
        raise Bad("empty_payload", key)
    return payload


def media_track(media: Mapping[str, Any]) -> str:
    """The leg of a media frame's `track` ("inbound" when absent); `Bad("unknown_track")` otherwise."""
    raw_track = media.get("track", "inbound")
    track = TRACKS.get(raw_track) if isinstance(raw_track, str) else None
    if track is None:
        raise Bad("unknown_track", str(raw_track)[:40])
    return track


def dtmf_digit(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in DTMF_DIGITS:
        raise Bad("bad_dtmf", repr(value)[:20])
    return value.upper()


def flatten_metadata(values: Mapping[str, Any], prefix: str = "", *, skip: frozenset[str] = frozenset()
                     ) -> dict[str, str]:
    """Str values kept, others JSON-encoded; bounded in key count and value length; keys in `skip`
    (shared secrets) never reach the metadata."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if len(out) >= MAX_METADATA_KEYS:
            break
        if str(key) in skip:
            continue
        if isinstance(value, str):
            text = value
        else:
            try:
                text = json.dumps(value, separators=(",", ":"), default=str)
            except (ValueError, RecursionError):  # circular or too deep: keep the call, lose the value
                text = "<unserializable>"
        out[f"{prefix}{key}"[:128]] = text[:MAX_METADATA_VALUE_CHARS]
    return out


def token_matches(expected: str, given: object) -> bool:
    """Constant-time comparison of a shared secret; a missing or non-string value never matches."""
    if not isinstance(given, str) or not expected:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def deinterleave_s16(data: bytes) -> tuple[bytes, bytes]:
    """Interleaved 2-channel s16 (any byte order: samples are only moved) → (left, right)."""
    frames = np.frombuffer(data, dtype=np.uint16).reshape(-1, 2)
    return frames[:, 0].tobytes(), frames[:, 1].tobytes()


def deinterleave_u8(data: bytes) -> tuple[bytes, bytes]:
    """Interleaved 2-channel 8-bit (G.711) → (left, right)."""
    return data[0::2], data[1::2]


class PendingAudio:
    """Audio held while the call's identity is not yet known (a metadata frame after the first audio).
    Bounded in bytes; beyond the bound the oldest frames are dropped and counted (`dropped_bytes`)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.dropped_frames = 0
        self.dropped_bytes = 0
        self._frames: deque[Audio] = deque()
        self._bytes = 0

    def add(self, audio: Audio) -> int:
        """Hold `audio`; returns how many older frames were dropped to make room."""
        self._frames.append(audio)
        self._bytes += len(audio.payload)
        dropped = 0
        while self._bytes > self.max_bytes and self._frames:
            old = self._frames.popleft()
            self._bytes -= len(old.payload)
            self.dropped_frames += 1
            self.dropped_bytes += len(old.payload)
            dropped += 1
        return dropped

    def take(self) -> list[Audio]:
        frames = list(self._frames)
        self._frames.clear()
        self._bytes = 0
        return frames

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._frames)
