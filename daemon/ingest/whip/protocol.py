"""WHIP's sans-I/O core: request checks, SDP offer checks, leg names and call metadata.

Values in, values out; nothing here touches a socket, a clock or aiortc. Every refusal is a
`WhipRefusal` carrying the HTTP status, a short metric label (`spoofwatch_drops_total{ingest="whip",
reason}`) and a one-line detail meant for the publisher's operator.

What we accept (RFC 9725 with aiortc 1.16 behind it): an SDP offer with at least one audio m-line
that publishes (sendonly/sendrecv, port ≠ 0), each such m-line offering one of opus/48000/2,
G722/8000, PCMU/8000, PCMA/8000, ICE credentials and a DTLS fingerprint. Video m-lines are answered
inactive (we analyse voice only) but must offer VP8 or H264: aiortc cannot answer an m-line it has no
codec for.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from daemon.model import AudioFormat, Codec

#: an SDP offer is a few KiB; anything near this is not one
MAX_SDP_BYTES = 64 * 1024
MAX_MEDIA_SECTIONS = 16
#: audio m-lines (= analysed legs) one session may publish
MAX_AUDIO_TRACKS = 8
MAX_METADATA_PARAMS = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_CALL_ID_CHARS = 128
MAX_LEG_CHARS = 32

SDP_CONTENT_TYPE = "application/sdp"
#: (encoding name lower-cased, RTP clock rate) → how we name it and what the leg decodes to
SUPPORTED_AUDIO: dict[tuple[str, int], tuple[str, AudioFormat]] = {
    ("opus", 48000): ("opus/48000/2", AudioFormat(Codec.OPUS, 48000)),
    ("g722", 8000): ("G722/8000", AudioFormat(Codec.G722, 16000)),
    ("pcmu", 8000): ("PCMU/8000", AudioFormat(Codec.PCMU, 8000)),
    ("pcma", 8000): ("PCMA/8000", AudioFormat(Codec.PCMA, 8000)),
}
ACCEPTED_AUDIO = ", ".join(name for name, _ in SUPPORTED_AUDIO.values())
SUPPORTED_VIDEO = ("vp8", "h264")
_STATIC_PT = {0: ("pcmu", 8000), 8: ("pcma", 8000), 9: ("g722", 8000)}
_TRANSPORT_ATTRS = {"ice-ufrag", "ice-pwd", "fingerprint", "setup"}
_SDP_LINE = re.compile(r"[a-z]=.*")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._:@-]")
_KEY_OK = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_METADATA_KEY_CHARS}}}")
_LOOKS_GENERATED = re.compile(r"\{?[0-9a-fA-F-]{16,}\}?")  # UUIDs and hex ids make poor leg names


class WhipRefusal(Exception):
    """A request we answer with an HTTP error. `reason` is the drops metric label."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = dict(headers or {})


# request checks ---------------------------------------------------------------------------------
def check_bearer(authorization: str | None, token: str) -> None:
    """`Authorization: Bearer <token>` (scheme case-insensitive, RFC 6750), compared in constant time."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise WhipRefusal(401, "unauthorized", "missing bearer token (Authorization: Bearer …)",
                          {"WWW-Authenticate": 'Bearer realm="spoofwatch-whip"'})
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise WhipRefusal(401, "unauthorized", "wrong bearer token",
                          {"WWW-Authenticate": 'Bearer realm="spoofwatch-whip", error="invalid_token"'})


def check_content_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != SDP_CONTENT_TYPE:
        raise WhipRefusal(415, "bad_content_type",
                          f"Content-Type must be {SDP_CONTENT_TYPE} (an SDP offer), got {media_type or 'none'!r}",
                          {"Accept-Post": SDP_CONTENT_TYPE})


# SDP --------------------------------------------------------------------------------------------
@dataclass
class MediaSection:
    """One m-line of an offer (or answer), as far as we need it."""

    index: int
    kind: str
    port: int
    fmts: list[str]
    mid: str = ""
    msid_track: str = ""
    direction: str = ""
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)  # PT → (name lower-cased, clock rate)
    #: which of ice-ufrag, ice-pwd, fingerprint, setup apply (its own or session-level)
    transport: set[str] = field(default_factory=set)
    #: the m-line states its direction itself (aiortc ignores a session-level one)
    explicit_direction: bool = False

    @property
    def codecs(self) -> list[tuple[str, int]]:
        """(name, clock rate) of every offered payload type, in preference order."""
        out = []
        for fmt in self.fmts:
            if not fmt.isdigit():
                continue
            pt = int(fmt)
            entry = self.rtpmap.get(pt) or _STATIC_PT.get(pt)
            if entry is not None:
                out.append(entry)
        return out

    def audio_format(self) -> AudioFormat | None:
        """The first supported audio codec: in an answer, the negotiated one."""
        for codec in self.codecs:
            if codec in SUPPORTED_AUDIO:
                return SUPPORTED_AUDIO[codec][1]
        return None

    @property
    def publishes(self) -> bool:
        return self.port != 0 and self.direction in ("sendonly", "sendrecv")


@dataclass
class Offer:
    sections: list[MediaSection]
    legs: list[tuple[MediaSection, str]]  # publishing audio m-lines and the leg each one feeds


def parse_sdp(text: str) -> list[MediaSection]:
    """Split an SDP body into media sections. Raises WhipRefusal(400) when it is not SDP."""
    lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
    if not lines or lines[0].strip() != "v=0":
        raise WhipRefusal(400, "bad_sdp", "body is not an SDP offer (it must start with v=0)")
    session_direction = "sendrecv"
    session_transport: set[str] = set()
    sections: list[MediaSection] = []
    for n, raw in enumerate(lines, 1):
        line = raw.strip()
        if not _SDP_LINE.fullmatch(line):
            raise WhipRefusal(400, "bad_sdp", f"SDP line {n} is not <type>=<value>: {line[:60]!r}")
        key, value = line[0], line[2:]
        if key == "m":
            parts = value.split()
            if len(parts) < 4 or not parts[1].split("/", 1)[0].isdigit():
                raise WhipRefusal(400, "bad_sdp", f"SDP line {n}: malformed m-line {line[:60]!r}")
            if len(sections) >= MAX_MEDIA_SECTIONS:
                raise WhipRefusal(400, "bad_sdp", f"more than {MAX_MEDIA_SECTIONS} m-lines")
            sections.append(MediaSection(len(sections), parts[0].lower(), int(parts[1].split("/", 1)[0]), parts[3:],
                                         direction=session_direction, transport=set(session_transport)))
            continue
        if key != "a":
            continue
        attr, _, arg = value.partition(":")
        cur = sections[-1] if sections else None
        if attr in ("sendonly", "sendrecv", "recvonly", "inactive"):
            if cur is None:
                session_direction = attr
            else:
                cur.direction = attr
                cur.explicit_direction = True
        elif attr in _TRANSPORT_ATTRS:
            (session_transport if cur is None else cur.transport).add(attr)
        elif cur is None:
            continue
        elif attr == "mid":
            cur.mid = arg.strip()
        elif attr == "msid":
            bits = arg.split()
            cur.msid_track = bits[1] if len(bits) > 1 else ""
        elif attr == "rtpmap":
            pt_s, _, enc = arg.partition(" ")
            name, _, rest = enc.strip().partition("/")
            rate_s = rest.split("/", 1)[0]
            if not pt_s.isdigit() or not name or not rate_s.isdigit():
                raise WhipRefusal(400, "bad_sdp", f"SDP line {n}: malformed a=rtpmap {line[:60]!r}")
            cur.rtpmap[int(pt_s)] = (name.lower(), int(rate_s))
    return sections


def check_offer(text: str) -> Offer:
    """What a WHIP offer must be for us to answer it; the legs it will feed, named."""
    sections = parse_sdp(text)
    if not sections:
        raise WhipRefusal(400, "bad_sdp", "SDP offer has no m-line")
    mids: set[str] = set()
    for s in sections:
        if s.port != 0 and s.transport != _TRANSPORT_ATTRS:
            missing = ", ".join(sorted(_TRANSPORT_ATTRS - s.transport))
            raise WhipRefusal(400, "bad_sdp", f"m-line {s.index} ({s.kind}) lacks a={missing}: not a WebRTC offer")
        if s.port != 0 and s.kind in ("audio", "video") and not s.explicit_direction:
            raise WhipRefusal(400, "bad_sdp", f"m-line {s.index} ({s.kind}) has no direction attribute "
                              "(a=sendonly)")
        if s.port != 0 and not s.mid:
            raise WhipRefusal(400, "bad_sdp", f"m-line {s.index} ({s.kind}) has no a=mid (WebRTC needs one on "
                              "every m-line)")
        if s.mid and s.mid in mids:
            raise WhipRefusal(400, "bad_sdp", f"a=mid:{s.mid[:20]} appears on more than one m-line")
        mids.add(s.mid)
    audio = [s for s in sections if s.kind == "audio" and s.publishes]
    if not audio:
        raise WhipRefusal(422, "no_audio", "the offer publishes no audio (we need an m=audio line with "
                          "sendonly or sendrecv): nothing to analyse")
    if len(audio) > MAX_AUDIO_TRACKS:
        raise WhipRefusal(422, "too_many_tracks", f"{len(audio)} audio tracks offered; at most {MAX_AUDIO_TRACKS}")
    for s in audio:
        if s.audio_format() is None:
            offered = ", ".join(f"{name}/{rate}" for name, rate in s.codecs) or "none"
            raise WhipRefusal(406, "unsupported_codec", f"audio m-line {s.index} offers {offered}; we take "
                              f"{ACCEPTED_AUDIO}")
    for s in sections:
        if s.kind == "video" and s.port != 0 and not any(name in SUPPORTED_VIDEO for name, _ in s.codecs):
            offered = ", ".join(sorted({name for name, _ in s.codecs})) or "none"
            raise WhipRefusal(422, "unsupported_codec", f"video m-line {s.index} offers only {offered}: publish "
                              "audio only (video is not analysed), or offer VP8 or H264 so it can be declined")
    return Offer(sections, list(zip(audio, leg_names(audio), strict=True)))


def leg_names(audio: list[MediaSection]) -> list[str]:
    """A leg per publishing audio m-line: the publisher's own a=mid or msid track id when it reads
    like a name ("caller", "agent"), else track-<n>. Unique within the call, ≤ 32 safe characters."""
    names: list[str] = []
    for n, s in enumerate(audio):
        name = ""
        for given in (s.mid, s.msid_track):
            clean = _ID_UNSAFE.sub("_", given)[:MAX_LEG_CHARS].strip("_")
            if clean and not clean.isdigit() and not _LOOKS_GENERATED.fullmatch(clean):
                name = clean
                break
        if not name or name in names:
            name = f"track-{n}"
        names.append(name)
    return names


# call identity ----------------------------------------------------------------------------------
def sanitise_call_id(value: str) -> str:
    """Characters a call id may carry in logs, metrics exemplars and webhooks; "" when nothing is left."""
    return _ID_UNSAFE.sub("_", value.strip())[:MAX_CALL_ID_CHARS].strip("_")


def call_identity(query: Iterable[tuple[str, str]]) -> tuple[str, dict[str, str]]:
    """(call id asked for, "" for none; metadata) from the WHIP URL's query parameters, e.g.
    /whip?call_id=abc&agent=42. Refuses (400) what a webhook consumer should not receive: over
    MAX_METADATA_PARAMS parameters, keys outside [A-Za-z0-9_.-] or overlong values. A repeated key
    keeps its first value."""
    call_id = ""
    metadata: dict[str, str] = {}
    seen = 0
    for key, value in query:
        seen += 1
        if seen > MAX_METADATA_PARAMS + 1:
            raise WhipRefusal(400, "bad_metadata", f"more than {MAX_METADATA_PARAMS} query parameters")
        if key == "call_id":
            call_id = call_id or sanitise_call_id(value)
            continue
        if not _KEY_OK.fullmatch(key):
            raise WhipRefusal(400, "bad_metadata", f"query parameter name {key[:40]!r} must be 1-"
                              f"{MAX_METADATA_KEY_CHARS} of A-Z a-z 0-9 _ . -")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise WhipRefusal(400, "bad_metadata", f"query parameter {key!r} is longer than "
                              f"{MAX_METADATA_VALUE_CHARS} characters")
        metadata.setdefault(key, value)
    if len(metadata) > MAX_METADATA_PARAMS:
        raise WhipRefusal(400, "bad_metadata", f"more than {MAX_METADATA_PARAMS} query parameters")
    return call_id, metadata
