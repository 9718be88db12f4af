"""Shared parts of the SIPREC tests: fixture loading (tests/fixtures/siprec/*.sip are written with LF line
ends and no Content-Length; `load` makes them wire-exact), a recording MediaAllocator, and a core
driven by a fake clock."""

from __future__ import annotations

from pathlib import Path

from daemon.audio.codecmap import PayloadSpec
from daemon.calls.api import CallRefused
from daemon.clock import FakeClock
from daemon.ingest.siprec.dialog import Peer, Send
from daemon.ingest.siprec.message import SipMessage, parse_message
from daemon.ingest.siprec.protocol import SrsCore, SrsSettings

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "siprec"
UDP = Peer("udp", ("127.0.0.1", 5080))
TCP = Peer("tcp", ("127.0.0.1", 5090), conn=1)


def wire(head: str, body: str = "") -> bytes:
    """A message from text with LF line ends: CRLF on the wire, Content-Length computed."""
    raw = body.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    lines = [ln for ln in head.strip("\n").split("\n") if not ln.lower().startswith("content-length")]
    return ("\r\n".join([*lines, f"Content-Length: {len(raw)}"]) + "\r\n\r\n").encode() + raw


def load(name: str, *subs: tuple[str, str]) -> bytes:
    """A fixture on the wire; `subs`: (old, new) text replacements made before Content-Length is set."""
    text = (FIXTURES / name).read_text()
    for old, new in subs:
        assert old in text, old
        text = text.replace(old, new)
    head, _, body = text.partition("\n\n")
    return wire(head, body)


class FakeMedia:
    def __init__(self, ports_free: int = 20, base: int = 20000) -> None:
        self.free = [base + 2 * i for i in range(ports_free)]
        self.calls: dict[str, dict[str, int]] = {}
        self.meta: dict[str, dict[str, str]] = {}
        self.maps: dict[str, dict[str, dict[int, PayloadSpec]]] = {}
        self.released: list[tuple[str, str]] = []
        self.packet_count: dict[str, int] = {}

    def allocate(self, call_id: str, leg_names: list[str], codec_maps: dict[str, dict[int, PayloadSpec]],
                 metadata: dict[str, str]) -> dict[str, int]:
        if call_id in self.calls:
            raise CallRefused("duplicate_call_id")
        if len(self.free) < len(leg_names):
            raise CallRefused("no_free_ports")
        ports = {name: self.free.pop(0) for name in leg_names}
        self.calls[call_id], self.meta[call_id], self.maps[call_id] = ports, metadata, codec_maps
        return ports

    def release(self, call_id: str, reason: str) -> None:
        ports = self.calls.pop(call_id, None)
        if ports is not None:
            self.free += ports.values()
            self.released.append((call_id, reason))

    def packets(self, call_id: str) -> int:
        return self.packet_count.get(call_id, 0) if call_id in self.calls else -1


class Harness:
    def __init__(self, **settings: object) -> None:
        self.clock = FakeClock()
        self.media = FakeMedia()
        self.dropped: list[str] = []
        self.core = SrsCore(SrsSettings(media_host="127.0.0.1", contact={"udp": "127.0.0.1:5060"},
                                        **settings),  # type: ignore[arg-type]
                            self.media, self.dropped.append)

    def send(self, data: bytes, peer: Peer = UDP) -> list[SipMessage]:
        return [parse_message(s.data) for s in self.core.receive(data, peer, self.clock.monotonic())]

    def advance(self, seconds: float) -> list[Send]:
        self.clock.advance(seconds)
        return self.core.poll(self.clock.monotonic())


def ack(invite: bytes, ok: SipMessage, cseq: int = 1) -> bytes:
    req = parse_message(invite)
    return wire(f"""ACK sip:srs@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-ack{cseq}
From: {req.get('from')}
To: {ok.get('to')}
Call-ID: {req.call_id}
CSeq: {cseq} ACK
""")


def in_dialog(method: str, invite: bytes, ok: SipMessage, cseq: int, body: str = "",
              content_type: str = "", branch: str = "") -> bytes:
    req = parse_message(invite)
    ctype = f"Content-Type: {content_type}\n" if content_type else ""
    return wire(f"""{method} sip:srs@127.0.0.1:5060 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5080;branch={branch or f'z9hG4bK-{method.lower()}{cseq}'}
From: {req.get('from')}
To: {ok.get('to')}
Call-ID: {req.call_id}
CSeq: {cseq} {method}
{ctype}""", body)
