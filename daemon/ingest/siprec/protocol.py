"""The SIPREC recording server (SRS) core, sans-I/O: `receive(bytes, peer, now)` and `poll(now)` return
the datagrams/stream writes to send; media ports come from an injected `MediaAllocator` (the RTP ingest).

A SIPREC-only UAS: INVITE (Require: siprec, multipart SDP + rs-metadata) → 100 + 200 with an SDP that
answers every audio m-line `a=recvonly` on a port of the RTP ingest; ACK; re-INVITE / UPDATE (hold,
resume, new metadata) applied without ending the call; BYE ends it; CANCEL; OPTIONS (SBC pings) 200.
Anything else gets a plain SIP error: a non-SIPREC INVITE 420 (unknown Require) or 488, a source outside
`allowed_networks` 403, too many sessions 503 + Retry-After, a bad body 400/488. Every refusal is
counted through `on_drop(reason)`; nothing is allocated before the request is known to be good, and an
allocation is released on every path that ends a session.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from daemon.calls.api import CallRefused
from daemon.ingest.siprec.dialog import MediaAllocator, Peer, Recording, Send, codec_maps, spoofwatch_call_id
from daemon.ingest.siprec.message import REASONS, SipError, SipMessage, parse_message, response_to
from daemon.ingest.siprec.metadata import (
    BodyError,
    Metadata,
    MetadataError,
    parse_metadata,
    plan_legs,
    split_body,
    webhook_metadata,
)
from daemon.ingest.siprec.sdp import Offer, SdpError, build_answer, parse_offer
from daemon.ingest.siprec.transaction import T1, FinalResponseTimer, ResponseCache, Tick

log = logging.getLogger("spoofwatch.ingest.siprec")
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE"
ACCEPT = "application/sdp, application/rs-metadata+xml, application/rs-metadata, multipart/mixed"
RETRY_AFTER_S = 5
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class SrsSettings:
    media_host: str  # the address in our SDP answer (the RTP ingest's listen_host)
    contact: dict[str, str] = field(default_factory=dict)  # transport → "host:port" for our Contact
    max_calls: int = 100
    allowed_networks: list[Network] = field(default_factory=lambda: [ipaddress.ip_network("127.0.0.0/8"),
                                                                        ipaddress.ip_network("::1/128")])
    session_timeout_s: float = 60.0
    t1: float = T1


class SrsCore:
    def __init__(self, settings: SrsSettings, media: MediaAllocator,
                 on_drop: Callable[[str], None] = lambda reason: None) -> None:
        self.settings = settings
        self.media = media
        self.on_drop = on_drop
        self.sessions: dict[str, Recording] = {}  # SIP Call-ID → session
        self.cache = ResponseCache(settings.t1)
        self.accepting = True  # off at shutdown: new INVITEs get 503
        self._tags = 0
        self._tag_prefix = secrets.token_hex(4)  # tags are globally unique (RFC 3261 §19.3)

    # input ---------------------------------------------------------------------------------------
    def receive(self, data: bytes, peer: Peer, now: float) -> list[Send]:
        if not data.strip(b"\r\n"):
            return []  # keep-alive (RFC 5626 CRLF ping)
        try:
            msg = parse_message(data)
        except SipError as exc:
            self.on_drop(exc.reason)
            return self._reply_unparsed(data, exc, peer)
        if not msg.is_request:
            return []  # we send no requests, so responses are strays
        if not self._allowed(peer):
            self.on_drop("forbidden_source")
            return [] if msg.method == "ACK" else [self._send(peer, response_to(msg, 403, to_tag=self._tag()))]
        try:
            return self._request(msg, peer, now)
        except (ValueError, KeyError) as exc:  # a header we could not make sense of late in the handling
            self.on_drop("malformed")
            log.info("siprec: %s refused: %s", msg.method, exc)
            return [] if msg.method == "ACK" else [self._send(peer, response_to(msg, 400, phrase="Bad Request"))]

    def _reply_unparsed(self, data: bytes, exc: SipError, peer: Peer) -> list[Send]:
        """A 400 when enough of the request survives to address a response (§21.4.1), else silence."""
        if exc.reason == "missing_header" or exc.reason == "bad_content_length":
            try:
                head = data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
                msg = parse_message(head.replace(b"Content-Length", b"X-Ignored-Length"))
            except SipError:
                return []
            if msg.is_request and msg.method != "ACK":
                return [self._send(peer, response_to(msg, 400, phrase=f"Bad Request ({exc})"))]
        return []

    def _allowed(self, peer: Peer) -> bool:
        try:
            ip = ipaddress.ip_address(peer.addr[0])
        except ValueError:
            return False
        return any(ip in net for net in self.settings.allowed_networks)

    def _request(self, msg: SipMessage, peer: Peer, now: float) -> list[Send]:
        method = msg.method
        if method == "ACK":
            self._ack(msg)
            return []
        if method != "INVITE":
            cached = self.cache.get(msg.branch, method)
            if cached is not None:
                return [Send(peer, cached)]  # a retransmitted request: the same answer
        if method == "INVITE":
            return self._invite(msg, peer, now)
        if method == "OPTIONS":
            out = response_to(msg, 200, to_tag=self._tag(), headers=[("allow", ALLOW), ("accept", ACCEPT),
                                                                    ("supported", "siprec")])
        elif method == "BYE":
            out = self._bye(msg, now)
        elif method == "CANCEL":
            out = self._cancel(msg)
        elif method == "UPDATE":
            out = self._update(msg, now)
        else:
            out = response_to(msg, 405, to_tag=self._tag(), headers=[("allow", ALLOW)])
        data = out.serialize()
        self.cache.put(msg.branch, method, data, now, peer.reliable)
        return [Send(peer, data)]

    # INVITE / re-INVITE ----------------------------------------------------------------------------
    def _invite(self, msg: SipMessage, peer: Peer, now: float) -> list[Send]:
        rec = self.sessions.get(msg.call_id)
        if rec is not None and not msg.to_tag and msg.branch == rec.invite_branch:
            return [Send(peer, rec.final)] if rec.final else []  # retransmitted INVITE
        if rec is not None:
            return self._reinvite(rec, msg, peer, now)
        if msg.to_tag:
            return self._refuse(msg, peer, 481, "unknown_dialog")
        unknown = [t for t in msg.values("require") if t != "siprec"]
        if unknown:
            return self._refuse(msg, peer, 420, "not_siprec", [("unsupported", ", ".join(unknown))])
        contact = msg.get("contact").lower()
        if "siprec" not in msg.values("require") and "+sip.src" not in contact and ";src" not in contact:
            return self._refuse(msg, peer, 488, "not_siprec", phrase="Not Acceptable Here (recording sessions only)")
        if not self.accepting:
            return self._refuse(msg, peer, 503, "shutting_down", [("retry-after", str(RETRY_AFTER_S))])
        if len(self.sessions) >= self.settings.max_calls:
            return self._refuse(msg, peer, 503, "max_calls", [("retry-after", str(RETRY_AFTER_S))])
        try:
            offer, md = self._read_body(msg)
            legs = plan_legs(offer.media, md)
        except _Refusal as r:
            return self._refuse(msg, peer, r.status, r.reason, phrase=r.phrase)
        except MetadataError as exc:
            return self._refuse(msg, peer, 400, "metadata_unknown_stream", phrase=f"Bad Request ({exc})")
        if not legs:
            return self._refuse(msg, peer, 488, "no_audio", phrase="Not Acceptable Here (no audio stream)")
        call_id = spoofwatch_call_id(msg.call_id)
        meta = {"sip_call_id": msg.call_id[:256], **webhook_metadata(md, legs)}
        try:
            ports = self.media.allocate(call_id, [leg.name for leg in legs], codec_maps(offer.media, legs), meta)
        except CallRefused as exc:
            return self._refuse(msg, peer, 503, f"refused_{exc.reason}", [("retry-after", str(RETRY_AFTER_S))])
        rec = Recording(msg.call_id, call_id, msg.from_tag, self._tag(), peer, msg.cseq[0], msg.branch, legs,
                        ports, offer, last_activity=now)
        self.sessions[msg.call_id] = rec
        log.info("siprec session started", extra={"call_id": call_id, "legs": {leg.name: ports[leg.name]
                                                                               for leg in legs}})
        trying = response_to(msg, 100)
        return [self._send(peer, trying), self._answer(rec, msg, peer, offer, now)]

    def _reinvite(self, rec: Recording, msg: SipMessage, peer: Peer, now: float) -> list[Send]:
        if msg.to_tag != rec.to_tag or msg.from_tag != rec.from_tag:
            return self._refuse(msg, peer, 481, "unknown_dialog")
        if rec.timer is not None:
            return self._refuse(msg, peer, 491, "request_pending")  # our last 200 is not ACKed yet
        if msg.cseq[0] <= rec.remote_cseq:
            return self._refuse(msg, peer, 500, "old_cseq", phrase="Server Internal Error (CSeq out of order)")
        rec.remote_cseq = msg.cseq[0]
        rec.invite_branch = msg.branch
        offer = self._apply_update(rec, msg, now)
        if isinstance(offer, SipMessage):
            return [self._send(peer, offer)]
        return [self._answer(rec, msg, peer, offer, now)]

    def _update(self, msg: SipMessage, now: float) -> SipMessage:
        rec = self.sessions.get(msg.call_id)
        if rec is None or msg.to_tag != rec.to_tag:
            self.on_drop("unknown_dialog")
            return response_to(msg, 481)
        offer = self._apply_update(rec, msg, now)
        if isinstance(offer, SipMessage):
            return offer
        rec.session_version += 1
        sdp = build_answer(offer, rec.port_map(offer), host=self.settings.media_host,
                           session_version=rec.session_version)
        return response_to(msg, 200, headers=self._answer_headers(rec), body=sdp.encode())

    def _apply_update(self, rec: Recording, msg: SipMessage, now: float) -> Offer | SipMessage:
        """The new SDP/metadata of a re-INVITE or UPDATE: hold, resume, transfer. A bad body gets an error
        response (returned) and leaves the session as it was (RFC 3264 §8)."""
        rec.last_activity = now
        rec.updates += 1
        if not msg.body:
            return rec.offer  # no offer: answer with the current state
        try:
            offer, md = self._read_body(msg)
            if md is not None:
                legs = plan_legs(offer.media, md)
                names = {leg.name for leg in legs} - {leg.name for leg in rec.legs}
                if names:  # leg names are fixed for the call's life (the pipelines exist): logged only
                    log.info("siprec metadata update names new participants %s", sorted(names),
                             extra={"call_id": rec.call_id})
        except _Refusal as r:
            self.on_drop(r.reason)
            return response_to(msg, r.status, phrase=r.phrase)
        except MetadataError as exc:
            self.on_drop("metadata_unknown_stream")
            return response_to(msg, 400, phrase=f"Bad Request ({exc})")
        held = [m.label or str(m.index) for m in offer.media if not m.sending]
        log.info("siprec session updated", extra={"call_id": rec.call_id, "held_streams": held})
        rec.offer = offer
        return offer

    def _answer(self, rec: Recording, msg: SipMessage, peer: Peer, offer: Offer, now: float) -> Send:
        rec.session_version += 1
        sdp = build_answer(offer, rec.port_map(offer), host=self.settings.media_host,
                           session_version=rec.session_version)
        resp = response_to(msg, 200, to_tag=rec.to_tag, headers=self._answer_headers(rec), body=sdp.encode())
        rec.final = resp.serialize()
        rec.peer = peer
        rec.timer = FinalResponseTimer(now, peer.reliable, self.settings.t1)
        return Send(peer, rec.final)

    def _answer_headers(self, rec: Recording) -> list[tuple[str, str]]:
        hostport = self.settings.contact.get(rec.peer.transport, self.settings.media_host)
        transport = "" if rec.peer.transport == "udp" else f";transport={rec.peer.transport}"
        return [("contact", f"<sip:srs@{hostport}{transport}>;+sip.srs"), ("allow", ALLOW),
                ("supported", "siprec"), ("content-type", "application/sdp")]

    def _read_body(self, msg: SipMessage) -> tuple[Offer, Metadata | None]:
        try:
            bodies = split_body(msg.get("content-type"), msg.body)
        except BodyError as exc:
            raise _Refusal(415 if "unsupported" in str(exc) else 400, "bad_body", str(exc)) from None
        if not bodies.sdp:
            raise _Refusal(488, "bad_sdp", "no SDP offer")
        try:
            offer = parse_offer(bodies.sdp)
        except SdpError as exc:
            raise _Refusal(488, "bad_sdp", str(exc)) from None
        try:
            md = parse_metadata(bodies.metadata) if bodies.metadata else None
        except MetadataError as exc:
            raise _Refusal(400, "bad_metadata", str(exc)) from None
        return offer, md

    # ACK, BYE, CANCEL ------------------------------------------------------------------------------
    def _ack(self, msg: SipMessage) -> None:
        rec = self.sessions.get(msg.call_id)
        if rec is not None and msg.to_tag == rec.to_tag:
            rec.timer = None
            rec.confirmed = True

    def _bye(self, msg: SipMessage, now: float) -> SipMessage:
        rec = self.sessions.get(msg.call_id)
        if rec is None or msg.to_tag != rec.to_tag:
            self.on_drop("unknown_dialog")
            return response_to(msg, 481)
        self._end(rec, "bye")
        return response_to(msg, 200)

    def _cancel(self, msg: SipMessage) -> SipMessage:
        # Our INVITEs are answered at once, so a CANCEL finds the final response already sent: it has no
        # effect (§9.2) and the SRC sends BYE. A CANCEL for no INVITE we know gets 481.
        rec = self.sessions.get(msg.call_id)
        if rec is None or rec.invite_branch != msg.branch:
            return response_to(msg, 481)
        return response_to(msg, 200, to_tag=rec.to_tag)

    # timers ---------------------------------------------------------------------------------------
    def poll(self, now: float) -> list[Send]:
        out: list[Send] = []
        for rec in list(self.sessions.values()):
            if rec.timer is not None:
                tick = rec.timer.poll(now)
                if tick is Tick.RETRANSMIT:
                    out.append(Send(rec.peer, rec.final))
                elif tick is Tick.TIMEOUT:
                    self.on_drop("no_ack")
                    log.warning("siprec: no ACK for our 200 within Timer H; session ended",
                                extra={"call_id": rec.call_id})
                    self._end(rec, "no_ack")
                    continue
            if now - rec.last_activity >= self.settings.session_timeout_s:
                packets = self.media.packets(rec.call_id)
                if packets > rec.packets_seen:
                    rec.packets_seen, rec.last_activity = packets, now
                else:
                    log.info("siprec session timed out (no signalling, no media)", extra={"call_id": rec.call_id})
                    self._end(rec, "session_timeout")
        self.cache.expire(now)
        return out

    def next_deadline(self) -> float | None:
        times = [t for t in (self.cache.deadline(),) if t is not None]
        for rec in self.sessions.values():
            times.append(rec.last_activity + self.settings.session_timeout_s)
            if rec.timer is not None:
                times.append(rec.timer.deadline())
        return min(times, default=None)

    def close(self, reason: str = "shutdown") -> None:
        for rec in list(self.sessions.values()):
            self._end(rec, reason)

    def _end(self, rec: Recording, reason: str) -> None:
        self.sessions.pop(rec.sip_call_id, None)
        self.media.release(rec.call_id, reason)
        log.info("siprec session ended", extra={"call_id": rec.call_id, "reason": reason})

    # helpers --------------------------------------------------------------------------------------
    def _refuse(self, msg: SipMessage, peer: Peer, status: int, reason: str,
                headers: list[tuple[str, str]] | None = None, phrase: str = "") -> list[Send]:
        self.on_drop(reason)
        return [self._send(peer, response_to(msg, status, to_tag=msg.to_tag or self._tag(), headers=headers,
                                             phrase=phrase))]

    @staticmethod
    def _send(peer: Peer, msg: SipMessage) -> Send:
        return Send(peer, msg.serialize())

    def _tag(self) -> str:
        self._tags += 1
        return f"{self._tag_prefix}{self._tags:x}"


class _Refusal(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason = status, reason
        self.phrase = f"{REASONS.get(status, 'Error')} ({detail[:100]})"
