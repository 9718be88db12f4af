"""FreeSWITCH mod_audio_fork (drachtio) and mod_audio_stream (amigniter), sans-I/O.

Sources: repo drachtio/drachtio-freeswitch-modules modules/mod_audio_fork (README: `uuid_audio_fork
<uuid> start <url> <mix-type> <rate> [bugname] [metadata]`; websocket subprotocol
`audio.drachtio.org`, env MOD_AUDIO_FORK_SUBPROTOCOL_NAME, older READMEs `audiostream.drachtio.org`;
one text frame of metadata, then binary L16; the README's example sends
`{"to":…,"from":…,"callid":…}`); repo amigniter/mod_audio_stream README and issues
#38 (stereo = interleaved caller/callee, `-c 2 S16_LE`), #92 (1-leg calls need mono), #121
(metadata can arrive after the first audio frames); `uuid_audio_stream <uuid> send_text|stop
[metadata]` sends a text frame mid-stream or before closing.

Neither module says the mix type or rate in-band: they come from the operator (config or the URL
the server routes). Identity: `call_id` given by the server (e.g. the UUID in the URL path), or the
first of `id_keys` in the metadata JSON. Until the identity is known, audio is held in a bounded
buffer (`max_pending_bytes`, drop-oldest, counted `pending_overflow`); a socket that closes with no
identity fails with `missing_identity` (its held audio counted). Metadata that is not JSON is kept
as `metadata`; metadata after the start is a `MetadataUpdate`.
Legs: mono → `caller`; mixed → `mixed`; stereo → `caller` (left) and `callee` (right), deinterleaved.
Auth: a shared secret in the metadata (`expected_key=(name, secret)`, constant time, never in
metadata) or in the URL path the server matches; the server must select the subprotocol
(`SUBPROTOCOL`) in its 101 answer or libwebsockets drops the socket.
"""

from __future__ import annotations

import json
from typing import Literal

from daemon.ingest.forks.common import ForkParserBase, PendingAudio, deinterleave_s16, flatten_metadata, token_matches
from daemon.ingest.forks.events import (
    CLOSE_POLICY_VIOLATION,
    Audio,
    CallStart,
    ForkEvent,
    LegSpec,
    MetadataUpdate,
    Problem,
)
from daemon.model import AudioFormat, Codec

INGEST = "freeswitch"
SUBPROTOCOL = "audio.drachtio.org"
#: What older mod_audio_fork builds (and their README) ask for.
LEGACY_SUBPROTOCOL = "audiostream.drachtio.org"
MixType = Literal["mono", "mixed", "stereo"]
DEFAULT_ID_KEYS = ("uuid", "callSid", "call_id", "callId", "callid", "channel_uuid")
SUPPORTED_RATES = (8000, 16000, 24000, 32000, 48000)


def leg_names(mix_type: MixType) -> tuple[str, ...]:
    return {"mono": ("caller",), "mixed": ("mixed",), "stereo": ("caller", "callee")}[mix_type]


class FreeswitchForkParser(ForkParserBase):
    def __init__(self, *, mix_type: MixType, sample_rate: int, call_id: str | None = None,
                 id_keys: tuple[str, ...] = DEFAULT_ID_KEYS, max_pending_bytes: int = 64000,
                 expected_key: tuple[str, str] | None = None, **limits: int) -> None:
        super().__init__(**limits)
        if mix_type not in ("mono", "mixed", "stereo"):
            raise ValueError(f"mix_type {mix_type!r}")
        if sample_rate not in SUPPORTED_RATES:
            raise ValueError(f"sample_rate {sample_rate} not in {SUPPORTED_RATES}")
        self.mix_type: MixType = mix_type
        self.fmt = AudioFormat(Codec.L16_LE, sample_rate)
        self.given_call_id = call_id
        self.id_keys = id_keys
        self.expected_key = expected_key
        self.pending = PendingAudio(max_pending_bytes)
        self._align = 4 if mix_type == "stereo" else 2

    def receive_text(self, text: str) -> list[ForkEvent]:
        refused = self._text_refused(text)
        if refused is not None:
            return refused
        meta, parsed = _metadata(text)
        skip: frozenset[str] = frozenset()
        if self.expected_key is not None:
            key, secret = self.expected_key
            if self.call is None and not token_matches(secret, parsed.get(key)):
                return self._unauthorized(f"metadata {key} missing or wrong")
            skip = frozenset({key})
        flat = flatten_metadata(meta, skip=skip)
        if self.call is not None:
            return [MetadataUpdate(flat)]
        call_id = next((v for k in self.id_keys if isinstance(v := parsed.get(k), str) and v), None)
        call_id = call_id or self.given_call_id
        if not call_id:
            return self._fatal("missing_identity", f"none of {list(self.id_keys)} in the metadata",
                               CLOSE_POLICY_VIOLATION)
        return self._start(call_id, flat)

    def receive_binary(self, data: bytes) -> list[ForkEvent]:
        refused = self._binary_refused(data)
        if refused is not None:
            return refused
        if len(data) % self._align:
            return self._problem("misaligned_frame", f"{len(data)} bytes, {self.mix_type}")
        if self.call is not None:
            return list(self._split(data))
        if self.expected_key is None and self.given_call_id:
            # identity known from the URL and no secret to wait for: start now, metadata may follow
            return self._start(self.given_call_id, {}) + list(self._split(data))
        # held whole (split on release) so dropping the oldest never separates a stereo pair
        dropped = self.pending.add(Audio("", data, self.fmt))
        if not dropped:
            return []
        for _ in range(dropped):
            self.drops.add("pending_overflow")
        return [Problem("pending_overflow", False, f"{dropped} frames dropped waiting for the metadata")]

    def connection_closed(self) -> list[ForkEvent]:
        if self.done:
            return []
        if self.call is None:
            held = self.pending.held_bytes
            self.pending.take()
            if held or self.given_call_id is None:
                return self._fatal("missing_identity", f"closed before the metadata; {held} bytes of audio dropped",
                                   CLOSE_POLICY_VIOLATION)
        return self._end("socket_closed")

    def _start(self, call_id: str, meta: dict[str, str]) -> list[ForkEvent]:
        meta = {"mix_type": self.mix_type, **meta}
        self.call = CallStart(call_id, meta, tuple(LegSpec(n, self.fmt) for n in leg_names(self.mix_type)))
        return [self.call, *(a for held in self.pending.take() for a in self._split(held.payload))]

    def _split(self, data: bytes) -> tuple[Audio, ...]:
        if self.mix_type == "stereo":
            left, right = deinterleave_s16(data)
            return Audio("caller", left, self.fmt), Audio("callee", right, self.fmt)
        return (Audio(leg_names(self.mix_type)[0], data, self.fmt),)


def _metadata(text: str) -> tuple[dict[str, object], dict[str, object]]:
    """(metadata to keep, parsed JSON object or {}): JSON objects are flattened, other text kept whole."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = None
    if isinstance(value, dict):
        return value, value
    return ({"metadata": text} if text else {}), {}

