"""Raw RTP ingest: UDP sockets over a port range, one leg per port.

Identity: the destination port. Ports are handed out per call by the control API (control.py);
with `auto_calls`, a packet on an unallocated port opens a call `rtp-<port>-<first SSRC>` (later
SSRC changes on that port continue the same leg, as real senders switch SSRC mid-call). A leg ends
on RTCP BYE, on DELETE through the control API, or after `inactivity_timeout_ms` without packets.

Hot path: `datagram_received` parses and jitter-buffers synchronously (never awaits). G.711 packets
the jitter buffer releases go to their leg at once, undecoded: the leg's audio path holds them and
resamples once per 250 ms chunk, so a chunk is cut when its last packet arrives. A single periodic
tick every `batch_ms` starts playout of new streams, decodes other codecs by payload type in ~100 ms
batches, fills timestamp gaps with silence, and ends idle legs. Per-leg backlog is bounded,
so a flood on one port costs that port its excess packets and never starves another call.
Sockets: SO_RCVBUF = recv_buffer_bytes; the datagram transport's recvfrom size is cut from
256 KiB to `datagram_max_bytes` (CPython's selector transport allocates that much per packet).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from daemon.audio.codecs import DecodeError, Decoder, make_decoder
from daemon.calls.api import CallAdmission, CallHandle, CallRefused, LegSink
from daemon.clock import Clock
from daemon.config import RtpIngestConfig
from daemon.ingest.rtp.codecmap import CodecMap, PayloadSpec, parse_map
from daemon.ingest.rtp.jitter import JitterBuffer
from daemon.ingest.rtp.packet import RTCP_BYE, RtpError, RtpPacket, is_rtcp, parse_rtcp, parse_rtp
from daemon.model import PCMU_8K, AudioFormat, CallInfo, Codec
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.rtp")
INGEST = "rtp"
MAX_BACKLOG_PACKETS = 500  # per leg between ticks (10 s of 20 ms packets): beyond it, a flood
MAX_GAP_FILL_S = 2.0
#: codecs whose payloads the leg's audio path takes undecoded (one byte per sample, stateless)
_RAW_CODECS = frozenset({Codec.PCMU, Codec.PCMA})
BYE_GRACE_S = 0.25  # media that a BYE overtook (separate sockets) still lands in its leg


@dataclass
class RtpCall:
    call_id: str
    handle: CallHandle
    legs: dict[str, PortLeg] = field(default_factory=dict)
    auto: bool = False


@dataclass
class PortLeg:
    """One allocated port: the leg of a call it carries, and its receive state."""

    port: int
    call: RtpCall
    name: str
    codecs: CodecMap
    window: int
    jitter: JitterBuffer = field(init=False)
    backlog: list[RtpPacket] = field(default_factory=list)
    last_arrival: float = 0.0
    sink: LegSink | None = None
    sink_fmt: AudioFormat | None = None  # the format the sink's own audio path decodes
    raw_pt: int | None = None  # the payload type handed to the sink undecoded (G.711 in sink_fmt)
    decoders: dict[int, Decoder] = field(default_factory=dict)
    expected_ts: int | None = None
    last_ssrc: int | None = None
    ended: bool = False
    packets: int = 0
    lost_reported: int = 0
    bye_at: float | None = None

    def __post_init__(self) -> None:
        self.jitter = JitterBuffer(self.window)


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, ingest: RtpIngest, port: int, rtcp: bool) -> None:
        self.ingest = ingest
        self.port = port
        self.rtcp = rtcp

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.ingest.receive_datagram(self.port, data, self.rtcp)

    def error_received(self, exc: Exception) -> None:
        self.ingest.metrics.drops.labels(INGEST, "socket_error").inc()


class RtpIngest:
    def __init__(self, cfg: RtpIngestConfig, admission: CallAdmission, metrics: Metrics, clock: Clock) -> None:
        self.cfg = cfg
        self.admission = admission
        self.metrics = metrics
        self.clock = clock
        self.default_codecs = parse_map(cfg.dynamic_payload_types)
        self.legs: dict[int, PortLeg] = {}  # rtp port → leg
        self.calls: dict[str, RtpCall] = {}
        self.transports: list[asyncio.DatagramTransport] = []
        self.rtp_ports: list[int] = []
        self._accepting = True
        self._tick: asyncio.TimerHandle | None = None
        self._refused_until: dict[int, float] = {}
        self._frames_in = metrics.frames_in.labels(INGEST)  # resolved once: this is per datagram

    # sockets -----------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        first = self.cfg.port_min + (self.cfg.port_min % 2)
        for port in range(first, self.cfg.port_max, 2):
            for p, rtcp in ((port, False), (port + 1, True)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.cfg.recv_buffer_bytes)
                try:
                    sock.bind((self.cfg.listen_host, p))
                except OSError:
                    sock.close()
                    await self.close()
                    raise
                sock.setblocking(False)
                transport, _ = await loop.create_datagram_endpoint(functools.partial(_Endpoint, self, p, rtcp),
                                                                   sock=sock)
                if self.cfg.datagram_max_bytes:
                    # CPython's _SelectorDatagramTransport reads with recvfrom(self.max_size); 256 KiB per
                    # packet dominates the cost at tens of thousands of packets per second.
                    transport.max_size = self.cfg.datagram_max_bytes  # type: ignore[attr-defined]
                self.transports.append(transport)
            self.rtp_ports.append(port)
        self._schedule_tick()
        log.info("rtp ingest listening on %s ports %d-%d (%d legs)", self.cfg.listen_host, first,
                 self.cfg.port_max, len(self.rtp_ports))

    def _schedule_tick(self) -> None:
        self._tick = asyncio.get_running_loop().call_later(self.cfg.batch_ms / 1000, self._on_tick)

    def stop_accepting(self) -> None:
        self._accepting = False

    async def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        for leg in list(self.legs.values()):
            self._flush_leg(leg, self.clock.monotonic())
            self._end_leg(leg, "shutdown")
        for t in self.transports:
            t.close()
        self.transports.clear()

    # allocation (control API) --------------------------------------------------------------------
    def free_ports(self) -> list[int]:
        return [p for p in self.rtp_ports if p not in self.legs and p not in self._refused_until]

    def allocate(self, call_id: str, leg_names: list[str], codec_maps: dict[str, dict[int, PayloadSpec]],
                 metadata: dict[str, str]) -> dict[str, int]:
        """Admit a call and give each leg a port. Raises CallRefused (no ports, limits, duplicate)."""
        if not self._accepting:
            raise CallRefused("shutting_down")
        if call_id in self.calls:
            raise CallRefused("duplicate_call_id")
        ports = self.free_ports()[: len(leg_names)]
        if len(ports) < len(leg_names):
            self.metrics.calls_refused.labels(INGEST, "no_free_ports").inc()
            raise CallRefused("no_free_ports", "no free RTP ports in the configured range")
        handle = self.admission.admit(CallInfo(call_id, INGEST, {**metadata, "rtp_ports": ",".join(map(str, ports))}))
        call = RtpCall(call_id, handle)
        self.calls[call_id] = call
        out = {}
        for name, port in zip(leg_names, ports, strict=True):
            codecs = CodecMap(self.default_codecs, codec_maps.get(name, {}))
            leg = PortLeg(port, call, name, codecs, self.cfg.jitter_window_packets, last_arrival=self.clock.monotonic())
            call.legs[name] = leg
            self.legs[port] = leg
            out[name] = port
        return out

    def end_call(self, call_id: str, reason: str) -> bool:
        call = self.calls.get(call_id)
        if call is None:
            return False
        now = self.clock.monotonic()
        for leg in list(call.legs.values()):
            self._flush_leg(leg, now)
            self._end_leg(leg, reason)
        return True

    # receive path (synchronous; never awaits) ----------------------------------------------------
    def receive_datagram(self, port: int, data: bytes, rtcp_port: bool) -> None:
        self._frames_in.inc()
        if rtcp_port or is_rtcp(data):
            self._receive_rtcp(port - 1 if rtcp_port else port, data)
            return
        try:
            pkt = parse_rtp(data)
        except RtpError as exc:
            self.metrics.drops.labels(INGEST, exc.reason).inc()
            return
        leg = self.legs.get(port)
        now = self.clock.monotonic()
        if leg is None:
            leg = self._auto_call(port, pkt, now)
            if leg is None:
                return
        if leg.ended:
            self.metrics.drops.labels(INGEST, "leg_ended").inc()
            return
        leg.last_arrival = now
        leg.packets += 1
        if len(leg.backlog) >= MAX_BACKLOG_PACKETS:
            self.metrics.drops.labels(INGEST, "flood").inc()
            return
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
                    leg.expected_ts = (first.timestamp + len(first.payload)) & 0xFFFFFFFF
                    return
            leg.backlog.extend(released)
            self._flush_leg(leg, now)
            return
        leg.backlog.extend(released)

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

    def _receive_rtcp(self, rtp_port: int, data: bytes) -> None:
        try:
            packets = parse_rtcp(data)
        except RtpError as exc:
            self.metrics.drops.labels(INGEST, exc.reason).inc()
            return
        leg = self.legs.get(rtp_port)
        if leg is None or leg.ended:
            return
        for p in packets:
            if p.packet_type == RTCP_BYE and leg.bye_at is None:
                # RTCP arrives on its own socket, so it can overtake the last media packets: the leg ends at
                # a tick after a short grace, once what is buffered has been played out.
                leg.bye_at = self.clock.monotonic()

    # tick: decode in batches, fill gaps, end idle legs --------------------------------------------
    def _on_tick(self) -> None:
        now = self.clock.monotonic()
        idle_after = self.cfg.inactivity_timeout_ms / 1000
        try:
            for leg in list(self.legs.values()):
                leg.backlog.extend(leg.jitter.start_playout())  # a new sub-stream waits at most one tick
                if leg.backlog:
                    self._flush_leg(leg, now)
                bye = leg.bye_at is not None and now - leg.bye_at >= BYE_GRACE_S
                if bye or now - leg.last_arrival >= idle_after:
                    leg.backlog.extend(leg.jitter.flush())
                    self._flush_leg(leg, now)
                    self._end_leg(leg, "rtcp_bye" if bye else "inactivity")
            self._refused_until = {p: t for p, t in self._refused_until.items() if t > now}
        except Exception:
            log.exception("rtp tick failed")
        finally:
            if self._tick is not None:
                self._schedule_tick()

    def _flush_leg(self, leg: PortLeg, now: float) -> None:
        lost = leg.jitter.stats.lost - leg.lost_reported
        if lost:
            self.metrics.rtp_packets_lost.inc(lost)
            leg.lost_reported += lost
        packets, leg.backlog = leg.backlog, []
        if not packets or leg.ended:
            return
        rate = 0
        parts: list[np.ndarray] = []

        def push_parts() -> None:
            nonlocal parts
            if parts and leg.sink is not None:
                leg.sink.push_pcm(np.concatenate(parts), rate, now)
            parts = []

        for pkt in packets:
            spec = leg.codecs.get(pkt.payload_type)
            if spec is None:
                self.metrics.drops.labels(INGEST, "unknown_pt").inc()
                continue
            if not spec.is_audio:
                self.metrics.drops.labels(INGEST, "not_audio").inc()  # telephone-event, CN: never audio
                continue
            if pkt.ssrc != leg.last_ssrc:
                leg.last_ssrc = pkt.ssrc
                leg.expected_ts = None  # new sub-stream: no gap fill across an SSRC change
            if leg.sink is not None and spec.fmt == leg.sink_fmt and spec.fmt is not None \
                    and spec.fmt.codec in _RAW_CODECS and pkt.payload:
                # the sink's own path decodes this payload type: hand over the bytes (1 byte = 1 sample)
                push_parts()
                gap_s = self._gap_s(leg, pkt.timestamp, spec.clock_rate)
                if gap_s:
                    leg.sink.push_silence(gap_s, now)
                leg.sink.push(pkt.payload, now)
                leg.expected_ts = (pkt.timestamp + len(pkt.payload)) & 0xFFFFFFFF
                continue
            decoder = leg.decoders.get(pkt.payload_type)
            if decoder is None:
                assert spec.fmt is not None
                decoder = leg.decoders[pkt.payload_type] = make_decoder(spec.fmt)
            try:
                samples = decoder.decode(pkt.payload)
            except DecodeError:
                self.metrics.drops.labels(INGEST, "decode_error").inc()
                continue
            if leg.sink is None:
                leg.sink_fmt = spec.fmt or PCMU_8K
                leg.sink = leg.call.handle.open_leg(leg.name, leg.sink_fmt)
                if spec.fmt is not None and spec.fmt.codec in _RAW_CODECS:
                    leg.raw_pt = pkt.payload_type
            gap_s = self._gap_s(leg, pkt.timestamp, spec.clock_rate)
            if gap_s:
                push_parts()  # what came before the gap goes first
                leg.sink.push_silence(gap_s, now)
            if decoder.out_rate != rate:
                push_parts()
                rate = decoder.out_rate
            parts.append(samples)
            leg.expected_ts = (pkt.timestamp + round(len(samples) * spec.clock_rate / decoder.out_rate)) & 0xFFFFFFFF
        push_parts()

    @staticmethod
    def _gap_s(leg: PortLeg, timestamp: int, clock_rate: int) -> float:
        """Seconds of audio lost between the last packet and this one (an RTP timestamp jump), to be
        filled with silence; 0 when none, or when the jump is a discontinuity rather than loss."""
        if leg.expected_ts is None:
            return 0.0
        gap_units = (timestamp - leg.expected_ts) & 0xFFFFFFFF
        if 0 < gap_units < 0x80000000:
            gap_s = gap_units / clock_rate
            if gap_s <= MAX_GAP_FILL_S:
                return gap_s
        return 0.0

    def _end_leg(self, leg: PortLeg, reason: str) -> None:
        if leg.ended:
            return
        leg.ended = True
        if leg.sink is not None:
            leg.sink.close()
        self.legs.pop(leg.port, None)
        call = leg.call
        if all(lg.ended for lg in call.legs.values()):
            call.handle.end(reason)
            self.calls.pop(call.call_id, None)
            log.info("rtp call ended", extra={"call_id": call.call_id, "reason": reason,
                                              "packets": sum(lg.packets for lg in call.legs.values())})
