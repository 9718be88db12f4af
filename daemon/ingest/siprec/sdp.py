"""SDP offer/answer for a recording server (RFC 3264, RFC 7866 §8): sans-I/O.

The SRC offers one `m=audio` per recorded stream (`a=sendonly`, `a=label:N`); the SRS answers every
m-line in order: a stream it records with `a=recvonly` on a port of the RTP ingest, a stream on hold
(`a=inactive`, `a=recvonly` offered, or port 0) with `a=inactive`, and anything it cannot take (not
audio, no codec in common) with port 0 (rejected, RFC 3264 §6).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.audio.codecmap import STATIC, CodecMapError, PayloadSpec, parse_rtpmap

MAX_STREAMS = 8
PLAIN_RTP = ("RTP/AVP", "RTP/AVPF")


class SdpError(ValueError):
    pass


@dataclass
class MediaLine:
    index: int
    media: str
    port: int
    proto: str
    payload_types: list[int]
    label: str = ""
    direction: str = "sendrecv"
    rtpmap: dict[int, PayloadSpec] = field(default_factory=dict)
    connection: str = ""

    @property
    def sending(self) -> bool:
        """The SRC sends media on this stream now (not on hold, not rejected)."""
        return self.port != 0 and self.direction in ("sendonly", "sendrecv") and self.connection != "0.0.0.0"

    @property
    def audio_types(self) -> dict[int, PayloadSpec]:
        """The audio payload types this stream may carry (offer's a=rtpmap, else the static table); none for
        SRTP (RTP/SAVP…): its media could not be decoded, so such a stream is declined."""
        out: dict[int, PayloadSpec] = {}
        if self.proto.upper() not in PLAIN_RTP:
            return out
        for pt in self.payload_types:
            spec = self.rtpmap.get(pt) or STATIC.get(pt)
            if spec is not None and spec.is_audio:
                out[pt] = spec
        return out


@dataclass
class Offer:
    media: list[MediaLine]
    session_connection: str = ""


def parse_offer(text: str) -> Offer:
    """Raises SdpError on an SDP a recorder cannot answer (no m-line, bad m-line, too many streams)."""
    offer = Offer([])
    current: MediaLine | None = None
    session_dir = "sendrecv"
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[1].split("/")[0].isdigit():
                raise SdpError(f"bad m-line {line[:60]!r}")
            try:
                pts = [int(p) for p in parts[3:]]
            except ValueError:
                pts = []
            current = MediaLine(len(offer.media), parts[0], int(parts[1].split("/")[0]), parts[2], pts,
                                direction=session_dir)
            offer.media.append(current)
            if len(offer.media) > MAX_STREAMS:
                raise SdpError(f"more than {MAX_STREAMS} m-lines")
        elif kind == "c":
            addr = value.split()[-1].split("/")[0] if value.split() else ""
            if current is None:
                offer.session_connection = addr
            else:
                current.connection = addr
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name in ("sendonly", "recvonly", "sendrecv", "inactive"):
                if current is None:
                    session_dir = name
                else:
                    current.direction = name
            elif current is not None and name == "label":
                current.label = arg.strip()
            elif current is not None and name == "rtpmap":
                pt, _, enc = arg.strip().partition(" ")
                if pt.isdigit():
                    try:
                        current.rtpmap[int(pt)] = parse_rtpmap(enc)
                    except CodecMapError:
                        pass  # a codec we do not decode: not chosen
    if not offer.media:
        raise SdpError("no m-line in the SDP")
    for m in offer.media:
        if not m.connection:
            m.connection = offer.session_connection
    return offer


def build_answer(offer: Offer, ports: dict[int, int], *, host: str, session_version: int) -> str:
    """`ports`: m-line index → our RTP port for the streams we record; others are answered inactive
    (on hold) or rejected (port 0)."""
    lines = ["v=0", f"o=spoofwatch 1 {session_version} IN IP4 {host}", "s=spoofwatch SRS", f"c=IN IP4 {host}",
             "t=0 0"]
    for m in offer.media:
        types = m.audio_types
        if m.media != "audio" or not types:
            fmt = " ".join(str(p) for p in m.payload_types) or "0"
            lines.append(f"m={m.media} 0 {m.proto} {fmt}")
            continue
        port = ports.get(m.index, 0) if m.port else 0  # an offered port 0 is answered with 0
        lines.append(f"m=audio {port} {m.proto} " + " ".join(str(p) for p in types))
        lines += [f"a=rtpmap:{pt} {s.name}/{s.clock_rate}" + (f"/{s.fmt.channels}" if s.fmt and s.fmt.channels > 1
                                                                 else "") for pt, s in types.items()]
        if m.label:
            lines.append(f"a=label:{m.label}")
        lines.append("a=recvonly" if port and m.sending else "a=inactive")
    return "\r\n".join(lines) + "\r\n"
