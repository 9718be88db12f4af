"""The RTP ingest's receive path: every datagram on an RTP or RTCP port flows through here,
synchronously (never awaits), from the socket's `datagram_received`.

RTP is parsed, latched on to its first sender (RTP from elsewhere is a counted `source_mismatch`),
and jitter-buffered; G.711 the jitter buffer releases goes to its leg's audio path at once,
undecoded. RTCP is parsed and only BYE is acted on (the tick in server.py ends the leg after a
grace). A packet on an unallocated port opens an auto call when `auto_calls` is on.

`receive_datagram` opens with a fast path for the common case, an in-order G.711 packet from the
latched sender, next in sequence and timestamp: it unpacks the three header fields it needs, lets the
jitter buffer step on (`take_next`) and pushes the payload to the leg, without building a packet
object. It runs 50 times a second per leg, so keep it free of extra calls, lookups and indirections.

`RtpReceivePath` is a base class of `RtpIngest` (server.py), which owns the state declared below.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from prometheus_client import Counter

from daemon.audio.codecmap import CodecMap, PayloadSpec
from daemon.calls.api import CallAdmission, CallRefused
from daemon.clock import Clock
from daemon.config import RtpIngestConfig
from daemon.ingest.rtp.leg import PortLeg, RtpCall, play_out
from daemon.ingest.rtp.packet import RTCP_BYE, RtpError, RtpPacket, is_rtcp, parse_rtcp, parse_rtp
from daemon.model import CallInfo
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.rtp")
INGEST = "rtp"
MAX_BACKLOG_PACKETS = 500  # per leg between ticks (10 s of 20 ms packets): beyond it, a flood
_SEQ_TS_SSRC = struct.Struct("!HII")  # bytes 2–11 of an RTP header


class RtpReceivePath:
    """Datagram in, leg state and audio out. The state is owned (created, ticked, torn down) by
    `RtpIngest`; this class only declares what the receive path reads and writes."""

    cfg: RtpIngestConfig
    admission: CallAdmission
    metrics: Metrics
    clock: Clock
    default_codecs: dict[int, PayloadSpec]
    legs: dict[int, PortLeg]  # rtp port → leg
    calls: dict[str, RtpCall]
    _accepting: bool
    _refused_until: dict[int, float]
    _frames_pending: int
    _source_mismatch: Counter

    def _leg_failed(self, leg: PortLeg, now: float, where: str) -> None:
        """End a leg whose step raised (RtpIngest: logged and counted once, port quarantined)."""
        raise NotImplementedError

    def receive_datagram(self, port: int, data: bytes, rtcp_port: bool, addr: Any) -> None:
        self._frames_pending += 1  # folded into frames_in at each tick: a locked counter per packet costs
        leg = self.legs.get(port)
        if (leg is not None and not rtcp_port and leg.raw_pt is not None and data[0] == 0x80
                and len(data) > 12 and (data[1] & 0x7F) == leg.raw_pt and leg.source == addr):
            # The common case, without a packet object: G.711 at version 2 with no CSRC, extension or
            # padding, from the latched sender, the next in sequence and timestamp of the playing source
            seq, ts, ssrc = _SEQ_TS_SSRC.unpack_from(data, 2)
            sink = leg.sink
            if (ssrc == leg.last_ssrc and ts == leg.expected_ts and sink is not None and not leg.backlog
                    and not leg.ended and leg.jitter.take_next(ssrc, seq)):
                now = self.clock.monotonic()
                leg.last_arrival = now
                leg.packets += 1
                payload = data[12:]
                try:
                    sink.push(payload, now)
                except Exception:
                    self._leg_failed(leg, now, "receive")
                    return
                leg.budget.media_s += len(payload) / leg.raw_rate
                leg.expected_ts = (ts + len(payload)) & 0xFFFFFFFF
                return
        if rtcp_port or is_rtcp(data):
            self._receive_rtcp(port - 1 if rtcp_port else port, data, addr)
            return
        try:
            pkt = parse_rtp(data)
        except RtpError as exc:
            self.metrics.drops.labels(INGEST, exc.reason).inc()
            return
        now = self.clock.monotonic()
        if leg is None:
            leg = self._auto_call(port, pkt, now)
            if leg is None:
                return
        if leg.source != addr:
            if leg.source is not None:
                self._source_mismatch.inc()
                return
            leg.source = addr  # latched: the first sender owns the leg
            leg.budget.begin(now)
        if leg.ended:
            self.metrics.drops.labels(INGEST, "leg_ended").inc()
            return
        leg.last_arrival = now
        leg.packets += 1
        if len(leg.backlog) >= MAX_BACKLOG_PACKETS:
            self.metrics.drops.labels(INGEST, "flood").inc()
            return
        try:
            self._receive_packet(leg, pkt, now)
        except Exception:
            self._leg_failed(leg, now, "receive")

    def _receive_packet(self, leg: PortLeg, pkt: RtpPacket, now: float) -> None:
        released = leg.jitter.push(pkt)
        if not released:
            return
        if leg.raw_pt is not None:
            # G.711 goes on at once: the leg's audio path holds it undecoded and resamples once per
            # 250 ms chunk, so the chunk is cut when its last packet arrives, not at the next tick.
            if len(released) == 1 and not leg.backlog:
                first = released[0]
                if (first.payload_type == leg.raw_pt and first.ssrc == leg.last_ssrc
                        and first.timestamp == leg.expected_ts and first.payload and leg.sink is not None):
                    # the in-order common case: no gap, same stream, same codec
                    leg.sink.push(first.payload, now)
                    leg.budget.media_s += len(first.payload) / leg.raw_rate
                    leg.expected_ts = (first.timestamp + len(first.payload)) & 0xFFFFFFFF
                    return
            leg.backlog.extend(released)
            play_out(leg, now, self._drop)
            return
        leg.backlog.extend(released)

    def _drop(self, reason: str) -> None:
        self.metrics.drops.labels(INGEST, reason).inc()

    def _auto_call(self, port: int, pkt: RtpPacket, now: float) -> PortLeg | None:
        if not self.cfg.auto_calls or not self._accepting:
            self.metrics.drops.labels(INGEST, "unallocated_port").inc()
            return None
        if self._refused_until.get(port, 0.0) > now:
            self.metrics.drops.labels(INGEST, "refused_port").inc()
            return None
        call_id = f"rtp-{port}-{pkt.ssrc:08x}"
        try:
            handle = self.admission.admit(CallInfo(call_id, INGEST, {"rtp_port": str(port), "ssrc": f"{pkt.ssrc:08x}",
                                                                    "auto": "true"}))
        except CallRefused as exc:
            self._refused_until[port] = now + 1.0  # do not re-ask admission for every packet of a refused call
            self.metrics.drops.labels(INGEST, "refused").inc()
            log.info("auto call on port %d refused: %s", port, exc.reason)
            return None
        self._refused_until.pop(port, None)
        call = RtpCall(call_id, handle, auto=True)
        leg = PortLeg(port, call, "caller", CodecMap(self.default_codecs), self.cfg.jitter_window_packets,
                      last_arrival=now)
        call.legs[leg.name] = leg
        self.calls[call_id] = call
        self.legs[port] = leg
        return leg

    def _receive_rtcp(self, rtp_port: int, data: bytes, addr: Any) -> None:
        try:
            packets = parse_rtcp(data)
        except RtpError as exc:
            self.metrics.drops.labels(INGEST, exc.reason).inc()
            return
        leg = self.legs.get(rtp_port)
        if leg is None or leg.ended:
            return
        if leg.source is None or addr[0] != leg.source[0]:
            self._source_mismatch.inc()  # RTCP only from the host whose RTP the leg latched on to
            return
        for p in packets:
            if p.packet_type == RTCP_BYE and leg.bye_at is None:
                # RTCP arrives on its own socket, so it can overtake the last media packets: the leg ends at
                # a tick after a short grace, once what is buffered has been played out.
                leg.bye_at = self.clock.monotonic()
