"""Asterisk AudioSocket (TCP), sans-I/O stream parser.

Sources: docs.asterisk.org/Configuration/Channel-Drivers/AudioSocket (types 0x00 hangup, 0x01 UUID
(16 raw bytes), 0x03 DTMF (1 ASCII byte), 0x10 slin 8 kHz, 0x11 12 kHz, 0x12 16 kHz, 0x13 24 kHz,
0x14 32 kHz, 0x15 44.1 kHz, 0x16 48 kHz, 0x17 96 kHz, 0x18 192 kHz, all s16le mono, 0xFF error;
header = type u8 + payload length u16 big-endian); asterisk/asterisk res/res_audiosocket.c
(`ast_audiosocket_send_frame` picks the kind from the frame's slin format) and
include/asterisk/res_audiosocket.h; asterisk/asterisk PR #1492 and asterisk/documentation PR #158
(the first release of the change documented 0x11 as **16 kHz**: `kind_0x11_is_slin16=True` for
those builds); repo CyCoreSystems/audiosocket PR #28 (older Asterisk labels every codec 0x10:
`rate_0x10_hz` tells the parser what the channel really carries).

Asterisk connects out (AudioSocket() app, Dial(AudioSocket/…), ARI externalMedia
encapsulation=audiosocket) and sends the UUID first: that is the call id. One socket = one channel
= one leg, named `channel`. The parser accepts the byte stream in arbitrary pieces (TCP splits);
a frame whose declared payload exceeds `max_payload_bytes` is fatal (the stream cannot be trusted
past it). Auth: none in the protocol; the server binds to a private address and may require the
UUID to be one the control plane handed out.
"""

from __future__ import annotations

import uuid

from daemon.ingest.forks.common import DTMF_DIGITS, ForkParserBase
from daemon.ingest.forks.events import Audio, CallStart, Dtmf, ForkEvent, LegSpec, Problem
from daemon.model import AudioFormat, Codec

INGEST = "audiosocket"
LEG = "channel"
KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_ERROR = 0xFF
#: audio kinds → sample rate (docs.asterisk.org, current)
AUDIO_KIND_RATES = {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100,
                    0x16: 48000, 0x17: 96000, 0x18: 192000}
#: 0xFF payload bit flags (AudioSocket doc "Asterisk error codes")
ERROR_HANGUP, ERROR_FRAME_FORWARDING, ERROR_MEMORY = 0x01, 0x02, 0x04
HEADER_BYTES = 3


def frame(kind: int, payload: bytes = b"") -> bytes:
    """Encode one AudioSocket frame (tests, load generators, the hangup we may send)."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


class AudioSocketParser(ForkParserBase):
    def __init__(self, *, max_payload_bytes: int = 16384, rate_0x10_hz: int = 8000,
                 kind_0x11_is_slin16: bool = False, max_problems_before_start: int = 16) -> None:
        super().__init__(max_problems_before_start=max_problems_before_start)
        self.max_payload_bytes = max_payload_bytes
        self.rates = dict(AUDIO_KIND_RATES)
        self.rates[0x10] = rate_0x10_hz
        if kind_0x11_is_slin16:
            self.rates[0x11] = 16000
        self._buf = bytearray()
        self._formats: dict[int, AudioFormat] = {k: AudioFormat(Codec.L16_LE, r) for k, r in self.rates.items()}

    def receive_data(self, data: bytes) -> list[ForkEvent]:
        """Feed bytes as they come off the socket; returns the events of every complete frame."""
        if self.done:
            return []
        self._buf += data
        out: list[ForkEvent] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= HEADER_BYTES and not self.done:
            kind = buf[pos]
            length = (buf[pos + 1] << 8) | buf[pos + 2]
            if length > self.max_payload_bytes:
                out += self._fatal("oversize_frame", f"kind 0x{kind:02x} declares {length} bytes "
                                   f"> {self.max_payload_bytes}")
                break
            end = pos + HEADER_BYTES + length
            if end > len(buf):
                break
            out += self._frame(kind, bytes(buf[pos + HEADER_BYTES:end]))
            pos = end
        del buf[:pos]
        if self.done:
            self._buf.clear()
        return out

    def connection_closed(self) -> list[ForkEvent]:
        """Socket close is also a hangup (the protocol says so)."""
        if self.done:
            return []
        out: list[ForkEvent] = []
        if self._buf:
            self.drops.add("truncated_frame")
            out.append(Problem("truncated_frame", False, f"{len(self._buf)} bytes of an unfinished frame"))
            self._buf.clear()
        return out + self._end("socket_closed")

    def _frame(self, kind: int, payload: bytes) -> list[ForkEvent]:
        fmt = self._formats.get(kind)
        if fmt is not None:
            if self.call is None:
                return self._problem("audio_before_uuid", f"kind 0x{kind:02x}")
            if not payload:
                return self._problem("empty_payload", f"kind 0x{kind:02x}")
            if len(payload) % 2:
                return self._problem("odd_length", f"{len(payload)} bytes of slin")
            return [Audio(LEG, payload, fmt)]
        if kind == KIND_UUID:
            if self.call is not None:
                return self._problem("duplicate_uuid", "")
            if len(payload) != 16:
                return self._fatal("bad_uuid", f"{len(payload)} bytes")
            call_id = str(uuid.UUID(bytes=payload))
            self.call = CallStart(call_id, {}, (LegSpec(LEG, self._formats[0x10]),))
            return [self.call]
        if kind == KIND_DTMF:
            digit = payload[:1].decode("ascii", "replace").upper()
            if self.call is None:
                return self._problem("dtmf_before_uuid", "")
            if len(payload) != 1 or digit not in DTMF_DIGITS:
                return self._problem("bad_dtmf", repr(payload[:4]))
            return [Dtmf(LEG, digit)]
        if kind == KIND_HANGUP:
            return self._end("hangup")
        if kind == KIND_ERROR:
            code = payload[0] if payload else 0
            out = self._problem("peer_error", f"code 0x{code:02x}")
            if code & ERROR_HANGUP:
                return out + self._end("peer_hangup")
            return out
        return self._problem("unknown_kind", f"0x{kind:02x}")



