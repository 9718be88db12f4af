"""SIP messages (RFC 3261 §7): a sans-I/O parser and serializer, no sockets, no clock.

`parse_message(bytes)` turns one datagram (or one framed TCP message) into a `SipMessage` or raises
`SipError` with a short `reason` (a metric label) and a text for the 400 reason phrase. `StreamFramer`
cuts a TCP byte stream into messages by Content-Length (mandatory on streams, RFC 3261 §18.3).

Only what a recording server needs: compact header names are expanded, folded header lines (obsolete
but legal) are unfolded, header names are case-insensitive, repeated headers keep their order.
Bounded: a message over `MAX_MESSAGE_BYTES` or with more than `MAX_HEADERS` header lines is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MAX_MESSAGE_BYTES = 65536
MAX_HEADERS = 128

#: RFC 3261 §7.3.3 and the IANA registry: the compact forms a sender may use
COMPACT = {"i": "call-id", "m": "contact", "e": "content-encoding", "l": "content-length", "c": "content-type",
           "f": "from", "s": "subject", "k": "supported", "t": "to", "v": "via", "o": "event", "r": "refer-to",
           "b": "referred-by", "u": "allow-events", "x": "session-expires"}
#: the spelling used when a header is written back out
CANONICAL = {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate", "content-length":
             "Content-Length", "content-type": "Content-Type", "max-forwards": "Max-Forwards",
             "retry-after": "Retry-After", "rseq": "RSeq"}
REQUIRED = ("via", "from", "to", "call-id", "cseq")
_TOKEN = re.compile(r"[A-Za-z0-9.!%*_+`'~-]+")
_STATUS = re.compile(r"SIP/2\.0 (\d{3}) (.*)")
REASONS = {100: "Trying", 200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405:
           "Method Not Allowed", 415: "Unsupported Media Type", 420: "Bad Extension", 481:
           "Call/Transaction Does Not Exist", 487: "Request Terminated", 488: "Not Acceptable Here", 491:
           "Request Pending", 500: "Server Internal Error", 503: "Service Unavailable", 513: "Message Too Large"}


class SipError(ValueError):
    """`reason`: metric label; the message text goes into a 400's reason phrase."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class SipMessage:
    """A request (`method`, `uri`) or a response (`status`, `phrase`). Header names are lower case."""

    method: str = ""
    uri: str = ""
    status: int = 0
    phrase: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return bool(self.method)

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def values(self, name: str) -> list[str]:
        """Comma-separated list headers (Require, Supported, Allow…) as stripped, lower-case tokens."""
        return [t.strip().lower() for v in self.get_all(name) for t in v.split(",") if t.strip()]

    @property
    def call_id(self) -> str:
        return self.get("call-id")

    @property
    def cseq(self) -> tuple[int, str]:
        num, _, method = self.get("cseq").partition(" ")
        return int(num), method.strip().upper()

    @property
    def branch(self) -> str:
        return param(self.get("via"), "branch")

    @property
    def from_tag(self) -> str:
        return param(self.get("from"), "tag")

    @property
    def to_tag(self) -> str:
        return param(self.get("to"), "tag")

    def serialize(self) -> bytes:
        start = f"{self.method} {self.uri} SIP/2.0" if self.is_request else f"SIP/2.0 {self.status} {self.phrase}"
        lines = [start]
        for k, v in self.headers:
            if k != "content-length":
                lines.append(f"{header_name(k)}: {v}")
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def header_name(lower: str) -> str:
    return CANONICAL.get(lower) or "-".join(p.capitalize() for p in lower.split("-"))


def param(value: str, name: str) -> str:
    """A `;name=value` parameter of a header value (outside the <URI>), '' when absent."""
    tail = value.rsplit(">", 1)[-1] if "<" in value else value
    for part in tail.split(";")[1:]:
        k, _, v = part.partition("=")
        if k.strip().lower() == name:
            return v.strip().strip('"')
    return ""


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, body = data.partition(sep)
        if found:
            return head, body
    raise SipError("malformed", "no empty line after the headers")


def parse_message(data: bytes) -> SipMessage:
    """Parse one complete message. Raises SipError (never anything else) on bad input."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipError("too_large", "message too large")
    head_bytes, body = _split_head(data.lstrip(b"\r\n"))
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise SipError("malformed", "headers are not UTF-8") from None
    lines = head.replace("\r\n", "\n").split("\n")
    msg = _start_line(lines[0])
    unfolded: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()  # RFC 3261 §7.3.1: folding is one space
        elif line.strip():
            unfolded.append(line)
    if len(unfolded) > MAX_HEADERS:
        raise SipError("malformed", "too many header lines")
    for line in unfolded:
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not _TOKEN.fullmatch(name):
            raise SipError("malformed", f"bad header line {line[:40]!r}")
        msg.headers.append((COMPACT.get(name, name), value.strip()))
    _check(msg)
    length = msg.get("content-length")
    if length:
        if not length.isdigit():
            raise SipError("bad_content_length", "Content-Length is not a number")
        n = int(length)
        if n > len(body):
            raise SipError("bad_content_length", "Content-Length larger than the body")
        body = body[:n]  # RFC 3261 §18.3: bytes past Content-Length in a datagram are discarded
    msg.body = body
    return msg


def _start_line(line: str) -> SipMessage:
    m = _STATUS.fullmatch(line.strip())
    if m:
        return SipMessage(status=int(m.group(1)), phrase=m.group(2))
    parts = line.strip().split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0" or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        raise SipError("malformed", "bad request line")
    return SipMessage(method=parts[0].upper(), uri=parts[1])


def _check(msg: SipMessage) -> None:
    for name in REQUIRED:
        if not msg.get(name):
            raise SipError("missing_header", f"missing {header_name(name)}")
    num, _, method = msg.get("cseq").partition(" ")
    if not num.isdigit() or len(num) > 10 or not method.strip():
        raise SipError("malformed", "bad CSeq")
    if msg.is_request and method.strip().upper() != msg.method and msg.method not in ("ACK", "CANCEL"):
        raise SipError("malformed", "CSeq method does not match the request")


def response_to(req: SipMessage, status: int, *, to_tag: str = "", headers: list[tuple[str, str]] | None = None,
                body: bytes = b"", phrase: str = "") -> SipMessage:
    """A response that copies Via, From, To (+ our tag), Call-ID and CSeq from the request (§8.2.6)."""
    out = SipMessage(status=status, phrase=phrase or REASONS.get(status, "Unknown"))
    out.headers = [("via", v) for v in req.get_all("via")]
    to = req.get("to")
    if to_tag and not param(to, "tag"):
        to = f"{to};tag={to_tag}"
    out.headers += [("from", req.get("from")), ("to", to), ("call-id", req.call_id), ("cseq", req.get("cseq"))]
    out.headers += headers or []
    out.body = body
    return out


class StreamFramer:
    """Cuts a TCP stream into messages (Content-Length frames the body). Keep-alive CRLFs are skipped.
    `feed` raises SipError when the stream cannot be framed: the connection must be closed."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while True:
            while self._buf[:2] == b"\r\n":
                del self._buf[:2]
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_MESSAGE_BYTES:
                    raise SipError("too_large", "headers too large")
                return out
            head = bytes(self._buf[:end]).decode("utf-8", "replace")
            m = re.search(r"^(?:content-length|l)[ \t]*:[ \t]*(\S*)", head, re.IGNORECASE | re.MULTILINE)
            if m is None or not m.group(1).isdigit():
                raise SipError("bad_content_length", "a stream message needs a numeric Content-Length")
            total = end + 4 + int(m.group(1))
            if total > MAX_MESSAGE_BYTES:
                raise SipError("too_large", "message too large")
            if len(self._buf) < total:
                return out
            out.append(bytes(self._buf[:total]))
            del self._buf[:total]
