"""Asterisk chan_websocket (ARI `externalMedia` with `transport=websocket`, Asterisk 20.16 / 21.11 /
22.6 / 23.0 and later), sans-I/O.

Sources: docs.asterisk.org/Configuration/Channel-Drivers/WebSocket (binary frames = media in the
channel's codec, text frames = control events); docs.asterisk.org Module_Configuration/chan_websocket
(`control_message_format` plain-text (legacy default) | json); repo pipecat-ai/pipecat
src/pipecat/serializers/asterisk_ws_channel.py (MEDIA_START fields connection_id, channel,
channel_id, format, optimal_frame_size, ptime, channel_variables; plain text is
`EVENT key:value key:value`; DTMF_END carries `digit`; MEDIA_XOFF/MEDIA_XON/QUEUE_DRAINED).

Identity: `channel_id` of MEDIA_START (fallback `connection_id`). `MEDIA_START` can arrive after the
first audio under load: audio is held (bounded, drop-oldest, counted `pending_overflow`) until it
comes. Metadata: channel, connection_id, format, ptime, optimal_frame_size and every channel
variable as `var.<name>` (the dialplan's way to pass data). Leg: one, named `channel`: whatever the
external-media channel is bridged to (a snoop with spy=in/out per direction gives separate legs, each
its own connection). Codecs: ulaw, alaw, slin (8 kHz), slin12…slin192 (host order = little-endian),
g722. Auth: Asterisk dials out to a URL the operator configures (put a secret in the URI path or use
`websocket_client.conf` credentials checked by the server on the upgrade); optionally
`expected_variable=(name, secret)` requires a channel variable (never in metadata).
"""

from __future__ import annotations

import json
from typing import Any

from daemon.ingest.forks.common import Bad, PendingAudio, dtmf_digit, flatten_metadata, secret_skip
from daemon.ingest.forks.events import (
    CLOSE_POLICY_VIOLATION,
    CLOSE_UNSUPPORTED_DATA,
    Audio,
    CallStart,
    Dtmf,
    ForkEvent,
    LegSpec,
    Problem,
)
from daemon.ingest.forks.jsonstream import JsonEventParser
from daemon.model import AudioFormat, Codec

INGEST = "asterisk_ws"
LEG = "channel"
_SLIN_RATES = {"slin": 8000, "slin12": 12000, "slin16": 16000, "slin24": 24000, "slin32": 32000,
               "slin44": 44100, "slin48": 48000, "slin96": 96000, "slin192": 192000}


def channel_format(name: object) -> AudioFormat | None:
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    if key == "ulaw":
        return AudioFormat(Codec.PCMU, 8000)
    if key == "alaw":
        return AudioFormat(Codec.PCMA, 8000)
    if key == "g722":
        return AudioFormat(Codec.G722, 16000)
    rate = _SLIN_RATES.get(key)
    return AudioFormat(Codec.L16_LE, rate) if rate else None


def parse_control(text: str) -> dict[str, Any]:
    """A control message in either format → dict with "event". JSON when it starts with "{",
    else plain text `EVENT key:value key:value …`."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            msg = json.loads(stripped)
        except (ValueError, RecursionError):
            raise Bad("invalid_json", stripped[:40]) from None
        if not isinstance(msg, dict) or not isinstance(msg.get("event"), str):
            raise Bad("missing_event", "JSON control without a string 'event'")
        return msg
    words = stripped.split()
    if not words:
        raise Bad("missing_event", "empty control message")
    out: dict[str, Any] = {"event": words[0]}
    for word in words[1:]:
        key, sep, value = word.partition(":")
        if sep:
            out[key] = value
    return out


class AsteriskWebsocketParser(JsonEventParser):
    ignored = frozenset({"MEDIA_XOFF", "MEDIA_XON", "QUEUE_DRAINED", "MEDIA_BUFFERING_COMPLETED", "STATUS",
                         "DTMF_BEGIN"})

    def __init__(self, *, max_pending_bytes: int = 64000, expected_variable: tuple[str, str] | None = None,
                 **limits: int) -> None:
        super().__init__(**limits)
        self.expected_variable = expected_variable
        self.fmt: AudioFormat | None = None
        self.pending = PendingAudio(max_pending_bytes)  # holds raw frames (fmt unknown yet) as Audio
        self.handlers.update(MEDIA_START=self._media_start, DTMF_END=self._dtmf_end, HANGUP=self._hangup)

    def decode(self, text: str) -> dict[str, Any]:
        return parse_control(text)

    def receive_binary(self, data: bytes) -> list[ForkEvent]:
        refused = self._binary_refused(data)
        if refused is not None:
            return refused
        if self.call is None or self.fmt is None:
            # format unknown until MEDIA_START: hold the bytes (a placeholder format, fixed on release)
            dropped = self.pending.add(Audio(LEG, data, AudioFormat(Codec.L16_LE, 8000)))
            if dropped:
                for _ in range(dropped):
                    self.drops.add("pending_overflow")
                return [Problem("pending_overflow", False, f"{dropped} frames dropped waiting for MEDIA_START")]
            return []
        if self.fmt.codec is Codec.L16_LE and len(data) % 2:
            return self._problem("odd_length", f"{len(data)} bytes of slin")
        return [Audio(LEG, data, self.fmt)]

    def connection_closed(self) -> list[ForkEvent]:
        if self.done:
            return []
        if self.call is None and len(self.pending):
            held = self.pending.held_bytes
            self.pending.take()
            return self._fatal("missing_identity", f"closed before MEDIA_START; {held} bytes dropped",
                               CLOSE_POLICY_VIOLATION)
        return self._end("socket_closed")

    def _dtmf_end(self, msg: dict[str, Any]) -> list[ForkEvent]:
        if self.call is None:
            raise Bad("dtmf_before_start", "DTMF_END")
        return [Dtmf(LEG, dtmf_digit(msg.get("digit")))]

    def _hangup(self, _msg: dict[str, Any]) -> list[ForkEvent]:
        return self._end("hangup")

    def _media_start(self, msg: dict[str, Any]) -> list[ForkEvent]:
        if self.call is not None:
            raise Bad("duplicate_start", "MEDIA_START")
        call_id = msg.get("channel_id") or msg.get("connection_id")
        if not isinstance(call_id, str) or not call_id:
            return self._fatal("bad_start", "MEDIA_START without channel_id/connection_id")
        fmt = channel_format(msg.get("format"))
        if fmt is None:
            return self._fatal("unsupported_media_format", f"format {msg.get('format')!r}"[:80],
                               CLOSE_UNSUPPORTED_DATA)
        variables = msg.get("channel_variables", {})
        if not isinstance(variables, dict):
            variables = {}
        skip = secret_skip(self.expected_variable, variables.get, "channel variable {}")
        keys = ("channel", "connection_id", "format", "ptime", "optimal_frame_size")
        meta: dict[str, str] = {k: str(msg[k]) for k in keys if k in msg and not isinstance(msg[k], dict | list)}
        meta.update(flatten_metadata(variables, "var.", skip=skip))
        self.fmt = fmt
        self.call = CallStart(call_id, meta, (LegSpec(LEG, fmt),))
        out: list[ForkEvent] = [self.call]
        for held in self.pending.take():
            if fmt.codec is Codec.L16_LE and len(held.payload) % 2:
                out += self._problem("odd_length", f"{len(held.payload)} bytes of slin (held)")
                continue
            out.append(Audio(LEG, held.payload, fmt))
        return out
