"""Sans-I/O frame builders for the PBX-side media forks: FreeSWITCH mod_audio_fork, jambonz
`listen`, Asterisk chan_websocket and Asterisk AudioSocket (TCP). See `forks_frames` for the model."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

from daemon.loadgen.forks_frames import (
    ForkDialect,
    Frame,
    Handshake,
    cut,
    dtmf_ticks,
    encode,
    equalize,
    interleave,
    mix,
)

if TYPE_CHECKING:
    from daemon.loadgen.forks_frames import Pcm

MIX_TYPES = ("mono", "mixed", "stereo")


def _dumps(obj: object) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _fork_audio(caller: Pcm, callee: Pcm | None, mix_type: str) -> Pcm:
    """mono: the caller; mixed: both parties summed; stereo: caller left, callee right interleaved."""
    if mix_type == "stereo":
        return interleave(caller, caller if callee is None else callee)
    if mix_type == "mixed":
        return mix(caller, callee)
    if mix_type == "mono":
        return caller
    raise ValueError(f"mix type {mix_type!r}: one of {MIX_TYPES}")


class FreeSwitch(ForkDialect):
    """mod_audio_fork: subprotocol `audio.drachtio.org`, one JSON metadata text frame, binary s16le
    20 ms frames (stereo = interleaved caller/callee). With `late_metadata` N the metadata goes out
    after the first N audio frames, as mod_audio_stream does under load. The socket closing ends the call."""

    name = "freeswitch"

    def __init__(self, caller: Pcm, callee: Pcm | None = None, *, mix_type: str = "mono", rate: int = 8000,
                 late_metadata: int = 0, subprotocol: str = "audio.drachtio.org",
                 params: dict[str, str] | None = None) -> None:
        self.mix_type, self.rate, self.subprotocol = mix_type, rate, subprotocol
        self.params = dict(params or {})
        channels = 2 if mix_type == "stereo" else 1
        fs = rate // 50 * channels
        (audio,) = equalize([_fork_audio(caller, callee, mix_type)], fs)
        self.frames = cut(encode(audio, "l16le"), 2 * fs)
        self.n_ticks = len(self.frames)
        self.late_metadata = min(late_metadata, self.n_ticks)

    def handshake(self, key: str) -> Handshake:
        return Handshake(subprotocols=(self.subprotocol,))

    def metadata(self, key: str) -> str:
        return _dumps({"uuid": key, "from": "+15085550100", "to": "+15085550199", **self.params})

    def opening(self, key: str) -> list[Frame]:
        return [] if self.late_metadata else [self.metadata(key)]

    def ticks(self, key: str) -> list[list[Frame]]:
        out: list[list[Frame]] = [[f] for f in self.frames]
        if self.late_metadata:
            out[self.late_metadata - 1].append(self.metadata(key))
        return out


class Jambonz(ForkDialect):
    """jambonz `listen`: subprotocol `audio.jambonz.org`, one JSON text frame with the call
    attributes, `sampleRate`, `mixType` and the verb's metadata merged in, then binary s16le;
    DTMF as `{"event":"dtmf",…}` text (`passDtmf`)."""

    name = "jambonz"

    def __init__(self, caller: Pcm, callee: Pcm | None = None, *, mix_type: str = "mono", rate: int = 8000,
                 params: dict[str, str] | None = None, dtmf: str = "", subprotocol: str = "audio.jambonz.org") -> None:
        self.mix_type, self.rate, self.params, self.dtmf = mix_type, rate, dict(params or {}), dtmf
        self.subprotocol = subprotocol
        channels = 2 if mix_type == "stereo" else 1
        fs = rate // 50 * channels
        (audio,) = equalize([_fork_audio(caller, callee, mix_type)], fs)
        self.frames = cut(encode(audio, "l16le"), 2 * fs)
        self.n_ticks = len(self.frames)

    def handshake(self, key: str) -> Handshake:
        return Handshake(subprotocols=(self.subprotocol,))

    def opening(self, key: str) -> list[Frame]:
        return [_dumps({"sampleRate": self.rate, "mixType": self.mix_type, "callSid": key,
                        "direction": "inbound", "from": "+15085550100", "to": "+15085550199",
                        "callId": f"{key}@loadgen", "accountSid": "spoofwatch-loadgen", **self.params})]

    def ticks(self, key: str) -> list[list[Frame]]:
        dtmf = dtmf_ticks(self.dtmf, self.n_ticks, self.tick_s)
        return [[f, *([_dumps({"event": "dtmf", "dtmf": dtmf[i], "duration": 250})] if i in dtmf else [])]
                for i, f in enumerate(self.frames)]


#: chan_websocket format name → (sample rate, wire codec)
ASTERISK_FORMATS = {"ulaw": (8000, "pcmu"), "alaw": (8000, "pcma"), "slin": (8000, "l16le"),
                    "slin16": (16000, "l16le"), "slin24": (24000, "l16le"), "slin32": (32000, "l16le"),
                    "slin48": (48000, "l16le")}


class AsteriskWs(ForkDialect):
    """Asterisk chan_websocket: text `MEDIA_START` (JSON, or the legacy plain `EVENT key:value …`),
    binary media in the channel format, `DTMF_END`. With `late_media_start` N, MEDIA_START follows the
    first N media frames (seen under load). The socket closing ends the call."""

    name = "asterisk"

    def __init__(self, channel: Pcm, *, fmt: str = "ulaw", control: str = "json", late_media_start: int = 0,
                 params: dict[str, str] | None = None, dtmf: str = "") -> None:
        if fmt not in ASTERISK_FORMATS:
            raise ValueError(f"Asterisk format {fmt!r}: one of {sorted(ASTERISK_FORMATS)}")
        if control not in ("json", "plain"):
            raise ValueError("control format: json or plain")
        self.fmt, self.control, self.params, self.dtmf = fmt, control, dict(params or {}), dtmf
        self.rate, wire = ASTERISK_FORMATS[fmt]
        fs = self.rate // 50
        (audio,) = equalize([channel], fs)
        self.frame_bytes = len(encode(audio[:fs], wire))
        self.frames = cut(encode(audio, wire), self.frame_bytes)
        self.n_ticks = len(self.frames)
        self.late_media_start = min(late_media_start, self.n_ticks)

    def _control(self, event: str, fields: dict[str, object]) -> str:
        if self.control == "json":
            return _dumps({"event": event, **fields})
        return " ".join([event, *(f"{k}:{v}" for k, v in fields.items() if not isinstance(v, dict))])

    def media_start(self, key: str) -> str:
        return self._control("MEDIA_START", {
            "connection_id": "conn-" + key, "channel": "WebSocket/loadgen-" + key,
            "channel_id": key, "format": self.fmt, "optimal_frame_size": self.frame_bytes, "ptime": 20,
            "channel_variables": self.params})

    def opening(self, key: str) -> list[Frame]:
        return [] if self.late_media_start else [self.media_start(key)]

    def ticks(self, key: str) -> list[list[Frame]]:
        dtmf = dtmf_ticks(self.dtmf, self.n_ticks, self.tick_s)
        out: list[list[Frame]] = []
        for i, f in enumerate(self.frames):
            tick: list[Frame] = [f]
            if self.late_media_start and i == self.late_media_start - 1:
                tick.append(self.media_start(key))
            if i in dtmf:
                tick.append(self._control("DTMF_END", {"digit": dtmf[i], "duration_ms": 100}))
            out.append(tick)
        return out


#: AudioSocket audio kinds by sample rate (docs.asterisk.org; 0x10 = slin 8 kHz)
AUDIOSOCKET_KINDS = {8000: 0x10, 12000: 0x11, 16000: 0x12, 24000: 0x13, 32000: 0x14, 44100: 0x15, 48000: 0x16,
                     96000: 0x17, 192000: 0x18}


def audiosocket_frame(kind: int, payload: bytes = b"") -> bytes:
    """type u8, payload length u16 big-endian, payload."""
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


class AudioSocket(ForkDialect):
    """Asterisk AudioSocket over TCP: `0x01` + the 16-byte UUID, `0x10` slin 8 kHz 20 ms frames (or
    `0x11`…`0x18` for higher rates), `0x03` DTMF, `0x00` hangup."""

    name = "audiosocket"
    transport = "tcp"

    def __init__(self, channel: Pcm, *, rate: int = 8000, dtmf: str = "") -> None:
        if rate not in AUDIOSOCKET_KINDS:
            raise ValueError(f"AudioSocket rate {rate}: one of {sorted(AUDIOSOCKET_KINDS)}")
        self.rate, self.dtmf = rate, dtmf
        fs = rate // 50
        (audio,) = equalize([channel], fs)
        kind = AUDIOSOCKET_KINDS[rate]
        self.frames = [audiosocket_frame(kind, f) for f in cut(encode(audio, "l16le"), 2 * fs)]
        self.n_ticks = len(self.frames)

    def opening(self, key: str) -> list[Frame]:
        return [audiosocket_frame(0x01, uuid.UUID(key).bytes)]

    def ticks(self, key: str) -> list[list[Frame]]:
        dtmf = dtmf_ticks(self.dtmf, self.n_ticks, self.tick_s)
        return [[f, *([audiosocket_frame(0x03, dtmf[i].encode())] if i in dtmf else [])]
                for i, f in enumerate(self.frames)]

    def closing(self, key: str) -> list[Frame]:
        return [audiosocket_frame(0x00)]
