"""Raw RTP ingest: UDP sockets over a port range, one leg per port.

Identity: the destination port. Ports are handed out per call by the control API (control.py);
with `auto_calls` (off by default: anyone who reaches the ports could open billed upstream
streams), a packet on an unallocated port opens a call `rtp-<port>-<first SSRC>` (later SSRC
changes on that port continue the same leg, as real senders switch SSRC mid-call). Each leg latches
on to the (ip, port) of its first RTP packet: RTP from elsewhere is dropped and counted
(`source_mismatch`), RTCP (on port+1 or muxed) is taken from the same host only. A leg ends on RTCP
BYE, on DELETE through the control API, or after `inactivity_timeout_ms` without packets.

Hot path (receive.py, a base class of RtpIngest): `receive_datagram` parses and jitter-buffers
synchronously (never awaits). G.711 packets the jitter buffer releases go to their leg at once,
undecoded: the leg's audio path holds them and resamples once per 250 ms chunk, so a chunk is cut
when its last packet arrives. This module owns the rest: sockets, port allocation, teardown, and a
single periodic tick every `batch_ms` that starts playout of new streams, decodes other codecs by
payload type in ~100 ms batches, fills timestamp gaps with silence (never ahead of the wall clock:
gapfill.py), reports jitter-buffer drops, and ends idle legs. Per-leg backlog is bounded, so a flood on one port costs
that port its excess packets and never starves another call; an exception in one leg ends that leg
(logged once, counted as `leg_error`) and never the tick or another leg.
Sockets (sockets.py): the free port pairs of the range are bound, taken ones are skipped and
reported; SO_RCVBUF = recv_buffer_bytes, read back and logged; the datagram transport's recvfrom
size is cut from 256 KiB to `datagram_max_bytes` (CPython's selector transport allocates that much
per packet).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from daemon.audio.codecmap import CodecMap, PayloadSpec, parse_map
from daemon.calls.api import CallAdmission, CallRefused
from daemon.clock import Clock
from daemon.config import RtpIngestConfig
from daemon.ingest.rtp.leg import PortLeg, RtpCall, play_out
from daemon.ingest.rtp.receive import INGEST, RtpReceivePath
from daemon.ingest.rtp.sockets import bind_pairs, ephemeral_range, overlaps
from daemon.model import CallInfo
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.rtp")
BYE_GRACE_S = 0.25  # media that a BYE overtook (separate sockets) still lands in its leg
QUARANTINE_S = 5.0  # a port whose leg failed opens no auto call for this long
#: drop reasons for JitterStats late, duplicates, probation, jumps (`lost` is its own metric: numbers
#: that never arrived); see _report
_JITTER_DROPS = ("late", "duplicate", "probation", "seq_jump")


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, ingest: RtpIngest, port: int, rtcp: bool) -> None:
        self.ingest = ingest
        self.port = port
        self.rtcp = rtcp
        #: done once the transport let go of its socket (a later loop turn than close())
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.ingest.receive_datagram(self.port, data, self.rtcp, addr)

    def error_received(self, exc: Exception) -> None:
        self.ingest.metrics.drops.labels(INGEST, "socket_error").inc()


class RtpIngest(RtpReceivePath):
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
        self.unavailable_ports: list[tuple[int, str]] = []
        self.rcvbuf_bytes = 0
        self._accepting = True
        self._tick: asyncio.TimerHandle | None = None
        self._refused_until: dict[int, float] = {}
        #: calls whose lifetime a signalling dialog owns (SIPREC): silence (hold) does not end their legs
        self._signalled: set[str] = set()
        self._frames_in = metrics.frames_in.labels(INGEST)
        self._frames_pending = 0  # datagrams not yet added to _frames_in (every tick, and at close)
        self._source_mismatch = metrics.drops.labels(INGEST, "source_mismatch")

    # sockets -----------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        bound = bind_pairs(cfg.listen_host, cfg.port_min, cfg.port_max, cfg.recv_buffer_bytes)
        self.unavailable_ports = bound.unavailable
        if not bound.pairs:
            first = bound.unavailable[0] if bound.unavailable else (cfg.port_min, "empty range")
            raise OSError(f"ingest.rtp: no port pair in {cfg.port_min}-{cfg.port_max} could be bound on "
                          f"{cfg.listen_host} (first failure: port {first[0]}: {first[1]})")
        loop = asyncio.get_running_loop()
        try:
            for port, rtp_sock, rtcp_sock in bound.pairs:
                for p, sock, rtcp in ((port, rtp_sock, False), (port + 1, rtcp_sock, True)):
                    transport, _ = await loop.create_datagram_endpoint(
                        functools.partial(_Endpoint, self, p, rtcp), sock=sock)
                    if cfg.datagram_max_bytes and hasattr(transport, "max_size"):
                        # CPython's _SelectorDatagramTransport reads with recvfrom(self.max_size); 256 KiB per
                        # packet dominates the cost at tens of thousands of packets per second. (uvloop's
                        # transport has no such attribute and sizes its own reads.)
                        transport.max_size = cfg.datagram_max_bytes
                    self.transports.append(transport)
                self.rtp_ports.append(port)
        except BaseException:
            for _, a, b in bound.pairs:
                a.close()
                b.close()
            await self.close()
            raise
        self.rcvbuf_bytes = bound.rcvbuf_bytes
        self.metrics.rtp_ports_usable.set(len(self.rtp_ports))
        self._log_start(bound.rcvbuf_reported)
        self._schedule_tick()

    def _log_start(self, rcvbuf_reported: int) -> None:
        cfg = self.cfg
        total = len(self.rtp_ports) + len(self.unavailable_ports)
        skipped = ""
        if self.unavailable_ports:
            shown = ", ".join(f"{p} ({why})" for p, why in self.unavailable_ports[:5])
            more = len(self.unavailable_ports) - 5
            skipped = f"; {len(self.unavailable_ports)} skipped, taken or refused: {shown}" + \
                      (f" and {more} more" if more > 0 else "")
        log.info("rtp ingest listening on %s: %d of %d port pairs usable in %d-%d%s; SO_RCVBUF %d bytes "
                 "(getsockopt reads %d)", cfg.listen_host, len(self.rtp_ports), total, cfg.port_min,
                 cfg.port_max, skipped, self.rcvbuf_bytes, rcvbuf_reported)
        if self.rcvbuf_bytes < cfg.recv_buffer_bytes:
            log.warning("rtp ingest: SO_RCVBUF is %d bytes, not the %d asked (recv_buffer_bytes): the kernel caps "
                        "it at net.core.rmem_max, so bursts may be dropped by the kernel. Raise it with `sysctl -w "
                        "net.core.rmem_max=%d` (and in /etc/sysctl.d/ to keep it)", self.rcvbuf_bytes,
                        cfg.recv_buffer_bytes, cfg.recv_buffer_bytes)
        eph = ephemeral_range()
        if eph is not None and overlaps(eph, (cfg.port_min, cfg.port_max)):
            log.warning("rtp ingest: ports %d-%d overlap the kernel's ephemeral range %d-%d "
                        "(net.ipv4.ip_local_port_range): outgoing connections may take RTP ports at any time",
                        cfg.port_min, cfg.port_max, *eph)

    def _schedule_tick(self) -> None:
        self._tick = asyncio.get_running_loop().call_later(self.cfg.batch_ms / 1000, self._on_tick)

    def stop_accepting(self) -> None:
        self._accepting = False

    async def close(self) -> None:
        if self._tick is not None:
            self._tick.cancel()
            self._tick = None
        now = self.clock.monotonic()
        for leg in list(self.legs.values()):
            self._guarded(leg, now, self._finish_leg, "shutdown")
        for t in self.transports:
            t.close()
        endpoints = [t.get_protocol() for t in self.transports]
        self.transports.clear()
        self._count_frames()
        # the sockets are closed on a later loop turn: wait for it, so the ports are free when this returns
        # (a restarted ingest, a test binding the same range next)
        waits = [e.closed for e in endpoints if isinstance(e, _Endpoint)]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*waits)

    # allocation (control API) --------------------------------------------------------------------
    def free_ports(self) -> list[int]:
        return [p for p in self.rtp_ports if p not in self.legs and p not in self._refused_until]

    def allocate(self, call_id: str, leg_names: list[str], codec_maps: dict[str, dict[int, PayloadSpec]],
                 metadata: dict[str, str], *, ingest: str = INGEST, signalled: bool = False) -> dict[str, int]:
        """Admit a call and give each leg a port. Raises CallRefused (no ports, limits, duplicate).
        `ingest`: the name the call is admitted under (its webhooks and limits: "siprec" for SIPREC).
        `signalled`: a signalling dialog owns the call's lifetime (it ends through `end_call`), so legs
        do not end after `inactivity_timeout_ms` of silence (a call on hold sends nothing)."""
        if not self._accepting:
            raise CallRefused("shutting_down")
        if call_id in self.calls:
            raise CallRefused("duplicate_call_id")
        ports = self.free_ports()[: len(leg_names)]
        if len(ports) < len(leg_names):
            self.metrics.calls_refused.labels(INGEST, "no_free_ports").inc()
            raise CallRefused("no_free_ports", "no free RTP ports in the configured range")
        handle = self.admission.admit(CallInfo(call_id, ingest, {**metadata, "rtp_ports": ",".join(map(str, ports))}))
        call = RtpCall(call_id, handle)
        if signalled:
            self._signalled.add(call_id)
        self.calls[call_id] = call
        out = {}
        for name, port in zip(leg_names, ports, strict=True):
            codecs = CodecMap(self.default_codecs, codec_maps.get(name, {}))
            leg = PortLeg(port, call, name, codecs, self.cfg.jitter_window_packets, last_arrival=self.clock.monotonic())
            call.legs[name] = leg
            self.legs[port] = leg
            out[name] = port
        return out

    def packets(self, call_id: str) -> int:
        """RTP packets received so far on a call's ports; -1 when no such call is live."""
        call = self.calls.get(call_id)
        return -1 if call is None else sum(lg.packets for lg in call.legs.values())

    def end_call(self, call_id: str, reason: str) -> bool:
        call = self.calls.get(call_id)
        if call is None:
            return False
        now = self.clock.monotonic()
        for leg in list(call.legs.values()):
            self._guarded(leg, now, self._finish_leg, reason)
        return True

    # tick: decode in batches, fill gaps, end idle legs --------------------------------------------
    def _count_frames(self) -> None:
        if self._frames_pending:
            self._frames_in.inc(self._frames_pending)
            self._frames_pending = 0

    def _on_tick(self) -> None:
        now = self.clock.monotonic()
        self._count_frames()
        try:
            for leg in list(self.legs.values()):
                self._guarded(leg, now, self._tick_leg)
            self._refused_until = {p: t for p, t in self._refused_until.items() if t > now}
        finally:
            if self._tick is not None:
                self._schedule_tick()

    def _tick_leg(self, leg: PortLeg, now: float) -> None:
        leg.backlog.extend(leg.jitter.start_playout())  # a new sub-stream waits at most one tick
        if leg.backlog:
            play_out(leg, now, self._drop)
        self._report(leg)
        bye = leg.bye_at is not None and now - leg.bye_at >= BYE_GRACE_S
        idle = now - leg.last_arrival >= self.cfg.inactivity_timeout_ms / 1000
        if bye or (idle and leg.call.call_id not in self._signalled):
            self._finish_leg(leg, now, "rtcp_bye" if bye else "inactivity")

    def _finish_leg(self, leg: PortLeg, now: float, reason: str) -> None:
        """Play out what is buffered, then end the leg."""
        leg.backlog.extend(leg.jitter.flush())
        play_out(leg, now, self._drop)
        self._report(leg)
        self._end_leg(leg, reason)

    def _guarded(self, leg: PortLeg, now: float, step: Any, *args: Any) -> None:
        """Run one leg's step; an exception ends that leg only."""
        try:
            step(leg, now, *args)
        except Exception:
            self._leg_failed(leg, now, getattr(step, "__name__", "step"))

    def _leg_failed(self, leg: PortLeg, now: float, where: str) -> None:
        if leg.failed:
            return  # logged and counted once per leg
        leg.failed = True
        self.metrics.drops.labels(INGEST, "leg_error").inc()
        log.exception("rtp leg failed in %s; the leg ends, other legs go on", where,
                      extra={"call_id": leg.call.call_id, "leg": leg.name, "port": leg.port})
        self._refused_until[leg.port] = now + QUARANTINE_S  # no auto call on this port for a while
        leg.backlog.clear()
        try:
            self._end_leg(leg, "error")
        except Exception:
            log.debug("ending the failed leg raised too", exc_info=True)

    def _report(self, leg: PortLeg) -> None:
        """Tell the metrics what the jitter buffer counted since the last report (every tick: cheap
        when nothing changed)."""
        stats = leg.jitter.stats
        counts = (stats.lost, stats.late, stats.duplicates, stats.probation, stats.jumps)
        seen = leg.reported
        if counts == seen:
            return
        if counts[0] != seen[0]:
            self.metrics.rtp_packets_lost.inc(counts[0] - seen[0])
        for i, reason in enumerate(_JITTER_DROPS, start=1):
            if counts[i] != seen[i]:
                self.metrics.drops.labels(INGEST, reason).inc(counts[i] - seen[i])
        leg.reported = counts

    def _end_leg(self, leg: PortLeg, reason: str) -> None:
        if leg.ended:
            return
        leg.ended = True
        if self.legs.get(leg.port) is leg:
            del self.legs[leg.port]  # the port is free again even if what follows raises
        call = leg.call
        call_over = all(lg.ended for lg in call.legs.values())
        if call_over:
            self.calls.pop(call.call_id, None)
            self._signalled.discard(call.call_id)
        try:
            if leg.sink is not None:
                leg.sink.close()
        finally:
            if call_over:
                self._end_call(call, reason)

    @staticmethod
    def _end_call(call: RtpCall, reason: str) -> None:
        call.handle.end(reason)
        budget = [lg.budget for lg in call.legs.values()]
        log.info("rtp call ended", extra={"call_id": call.call_id, "reason": reason,
                                          "packets": sum(lg.packets for lg in call.legs.values()),
                                          "gap_fill_s": round(sum(b.filled_s for b in budget), 3),
                                          "gap_fill_refused_s": round(sum(b.refused_s for b in budget), 3)})
