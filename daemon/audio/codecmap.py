"""RTP payload types → what they carry. Decoding goes by each *packet's* payload type (senders switch
PT mid-call). Static types per RFC 3551; dynamic ones (96–127) come from the control API per
session (an SDP's a=rtpmap lines) or from `[ingest.rtp] dynamic_payload_types`.

Lives with the audio code, not the RTP ingest, so that config validation (daemon/config.py) can
parse a codec map without importing an ingest."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from daemon.model import AudioFormat, Codec


@dataclass(frozen=True)
class PayloadSpec:
    """`fmt` None means not audio (comfort noise, telephone-event): counted, never decoded."""

    name: str
    clock_rate: int  # RTP timestamp units per second
    fmt: AudioFormat | None

    @property
    def is_audio(self) -> bool:
        return self.fmt is not None


STATIC: dict[int, PayloadSpec] = {
    0: PayloadSpec("PCMU", 8000, AudioFormat(Codec.PCMU, 8000)),
    8: PayloadSpec("PCMA", 8000, AudioFormat(Codec.PCMA, 8000)),
    9: PayloadSpec("G722", 8000, AudioFormat(Codec.G722, 16000)),  # RTP clock 8000, audio 16 kHz (RFC 3551)
    10: PayloadSpec("L16", 44100, AudioFormat(Codec.L16_BE, 44100, 2)),
    11: PayloadSpec("L16", 44100, AudioFormat(Codec.L16_BE, 44100, 1)),
    13: PayloadSpec("CN", 8000, None),
    101: PayloadSpec("telephone-event", 8000, None),
}


class CodecMapError(ValueError):
    pass


def parse_rtpmap(value: str) -> PayloadSpec:
    """'opus/48000/2', 'L16/16000', 'PCMU/8000', 'telephone-event/8000' → PayloadSpec."""
    parts = value.strip().split("/")
    if len(parts) not in (2, 3) or not parts[1].isdigit() or (len(parts) == 3 and not parts[2].isdigit()):
        raise CodecMapError(f"{value!r} is not NAME/RATE[/CHANNELS]")
    name, rate = parts[0], int(parts[1])
    channels = int(parts[2]) if len(parts) == 3 else 1
    if not 1 <= channels <= 2 or not 8000 <= rate <= 192000:
        raise CodecMapError(f"{value!r}: unsupported rate or channel count")
    key = name.lower()
    if key == "pcmu":
        return PayloadSpec("PCMU", rate, AudioFormat(Codec.PCMU, rate))
    if key == "pcma":
        return PayloadSpec("PCMA", rate, AudioFormat(Codec.PCMA, rate))
    if key == "g722":
        return PayloadSpec("G722", 8000, AudioFormat(Codec.G722, 16000))
    if key == "l16":
        return PayloadSpec("L16", rate, AudioFormat(Codec.L16_BE, rate, channels))
    if key == "opus":
        return PayloadSpec("opus", 48000, AudioFormat(Codec.OPUS, 48000, channels))
    if key in ("telephone-event", "cn"):
        return PayloadSpec(name, rate, None)
    raise CodecMapError(f"unknown codec {name!r} (PCMU, PCMA, G722, L16, opus, telephone-event, CN)")


def parse_map(entries: Mapping[str, str] | Iterable[str]) -> dict[int, PayloadSpec]:
    """{"97": "opus/48000/2"} or ["97 opus/48000/2"] → {97: spec}; PT must be 0–127."""
    pairs: list[tuple[str, str]] = []
    if isinstance(entries, Mapping):
        pairs = [(str(k), str(v)) for k, v in entries.items()]
    else:
        for entry in entries:
            pt_s, _, spec = entry.strip().partition(" ")
            pairs.append((pt_s, spec))
    out: dict[int, PayloadSpec] = {}
    for pt_s, spec in pairs:
        if not pt_s.isdigit() or not 0 <= int(pt_s) <= 127:
            raise CodecMapError(f"payload type {pt_s!r} is not 0–127")
        out[int(pt_s)] = parse_rtpmap(spec)
    return out


class CodecMap:
    def __init__(self, *layers: Mapping[int, PayloadSpec]) -> None:
        self._map: dict[int, PayloadSpec] = dict(STATIC)
        for layer in layers:
            self._map.update(layer)

    def get(self, pt: int) -> PayloadSpec | None:
        return self._map.get(pt)
