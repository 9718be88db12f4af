"""One recording session (RFC 7866) as the SRS sees it: the SIP dialog plus the legs it records.

Plain state, no I/O. The SRS core (protocol.py) creates it on an accepted INVITE and ends it on BYE,
on Timer H (no ACK for our 200), or after `session_timeout_s` without signalling and without media.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from daemon.audio.codecmap import PayloadSpec
from daemon.ingest.siprec.metadata import LegPlan
from daemon.ingest.siprec.sdp import MediaLine, Offer
from daemon.ingest.siprec.transaction import FinalResponseTimer

_UNSAFE = re.compile(r"[^A-Za-z0-9@._:+-]+")


@dataclass(frozen=True)
class Peer:
    """Where a message came from and where its responses go: UDP source address, or a TCP connection."""

    transport: str  # "udp" | "tcp"
    addr: tuple[str, int]
    conn: int = 0  # TCP connection number (0 for UDP)

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"


@dataclass(frozen=True)
class Send:
    peer: Peer
    data: bytes


class MediaAllocator(Protocol):
    """What the SRS needs of the RTP ingest (daemon/ingest/rtp/server.py)."""

    def allocate(self, call_id: str, leg_names: list[str], codec_maps: dict[str, dict[int, PayloadSpec]],
                 metadata: dict[str, str]) -> dict[str, int]:
        """Admit the call, one port per leg; raises CallRefused."""
        ...

    def release(self, call_id: str, reason: str) -> None:
        """End the call (its summary goes out) and free its ports; a no-op for an unknown call."""
        ...

    def packets(self, call_id: str) -> int:
        """RTP packets received so far on the call's ports (-1: the call has already ended)."""
        ...


@dataclass
class Recording:
    sip_call_id: str
    call_id: str
    from_tag: str
    to_tag: str
    peer: Peer
    remote_cseq: int
    invite_branch: str
    legs: list[LegPlan]
    ports: dict[str, int]  # leg name → RTP port
    offer: Offer
    last_activity: float
    packets_seen: int = 0
    confirmed: bool = False
    session_version: int = 1
    final: bytes = b""  # last final response to an INVITE, for retransmission
    timer: FinalResponseTimer | None = None
    updates: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def port_map(self, offer: Offer) -> dict[int, int]:
        """m-line index of `offer` → our port: a stream keeps its port across re-INVITEs, matched by label
        (or by position when the sender gives no labels). Streams new since the INVITE get none."""
        by_label = {leg.label: self.ports[leg.name] for leg in self.legs if leg.label}
        by_index = {leg.index: self.ports[leg.name] for leg in self.legs}
        out: dict[int, int] = {}
        for m in offer.media:
            port = by_label.get(m.label) if m.label else by_index.get(m.index)
            if port is not None and m.media == "audio":
                out[m.index] = port
        return out


def spoofwatch_call_id(sip_call_id: str) -> str:
    return "siprec-" + _UNSAFE.sub("_", sip_call_id)[:160]


def codec_maps(media: list[MediaLine], legs: list[LegPlan]) -> dict[str, dict[int, PayloadSpec]]:
    """Each leg's dynamic payload types from its m-line's a=rtpmap (static ones need no map)."""
    by_index = {m.index: m for m in media}
    return {leg.name: {pt: spec for pt, spec in by_index[leg.index].audio_types.items() if pt >= 96}
            for leg in legs}
