"""SIPREC recording server: the asyncio UDP and TCP transports around the sans-I/O core (protocol.py).

Media is not handled here: each session's streams get ports of the RTP ingest (`RtpIngest.allocate` with
`signalled=True`, so silence on hold does not end a leg), and the session's end (BYE, Timer H, session
timeout, shutdown) frees them through `RtpIngest.end_call`.

UDP: `datagram_received` hands the datagram to the core and sends what it returns (never awaits).
TCP: one owned reader task per connection (at most MAX_CONNECTIONS), framed by Content-Length; a stream
that cannot be framed is closed. One timer handle, re-armed to the core's next deadline after every
input, drives retransmissions, Timer H and session timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import ssl
from typing import Any

from daemon.audio.codecmap import PayloadSpec
from daemon.clock import Clock
from daemon.configingest import SiprecIngestConfig
from daemon.configschema import parse_hostport
from daemon.ingest.rtp.server import RtpIngest
from daemon.ingest.siprec.dialog import Peer, Send
from daemon.ingest.siprec.message import SipError, StreamFramer
from daemon.ingest.siprec.protocol import SrsCore, SrsSettings
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.siprec")
INGEST = "siprec"
MAX_CONNECTIONS = 1024
READ_BYTES = 65536


class RtpMedia:
    """The core's MediaAllocator, on the RTP ingest."""

    def __init__(self, rtp: RtpIngest) -> None:
        self.rtp = rtp

    def allocate(self, call_id: str, leg_names: list[str], codec_maps: dict[str, dict[int, PayloadSpec]],
                 metadata: dict[str, str]) -> dict[str, int]:
        return self.rtp.allocate(call_id, leg_names, codec_maps, metadata, ingest=INGEST, signalled=True)

    def release(self, call_id: str, reason: str) -> None:
        self.rtp.end_call(call_id, reason)

    def packets(self, call_id: str) -> int:
        return self.rtp.packets(call_id)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, ingest: SiprecIngest) -> None:
        self.ingest = ingest

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.ingest.receive(data, Peer("udp", (addr[0], addr[1])))

    def error_received(self, exc: Exception) -> None:
        self.ingest.drop("socket_error")


class SiprecIngest:
    def __init__(self, cfg: SiprecIngestConfig, rtp: RtpIngest, metrics: Metrics, clock: Clock, *,
                 reuse_port: bool = False) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.clock = clock
        self.reuse_port = reuse_port
        host = cfg.advertised_host or rtp.cfg.listen_host
        settings = SrsSettings(media_host=host, max_calls=cfg.max_calls, session_timeout_s=cfg.session_timeout_s,
                               allowed_networks=[ipaddress.ip_network(n, strict=False) for n in cfg.allowed_networks],
                               t1=cfg.t1_ms / 1000)
        self.core = SrsCore(settings, RtpMedia(rtp), self.drop)
        self.ports: dict[str, int] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._servers: list[asyncio.Server] = []
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._readers: set[asyncio.Task[None]] = set()
        self._next_conn = 0
        self._timer: asyncio.TimerHandle | None = None

    def drop(self, reason: str) -> None:
        self.metrics.drops.labels(INGEST, reason).inc()

    async def start(self) -> dict[str, int]:
        """Bind the listeners; returns {"siprec_udp"|"siprec_tcp"|"siprec_tls": port} for those configured."""
        loop = asyncio.get_running_loop()
        host = self.cfg.advertised_host
        try:
            if self.cfg.listen_udp:
                h, p = parse_hostport(self.cfg.listen_udp)
                transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=(h, p),
                                                                   reuse_port=self.reuse_port or None)
                self._udp = transport
                self.ports["siprec_udp"] = transport.get_extra_info("sockname")[1]
                self.core.settings.contact["udp"] = f"{host or h}:{self.ports['siprec_udp']}"
            for kind, listen in (("tcp", self.cfg.listen_tcp), ("tls", self.cfg.listen_tls)):
                if not listen:
                    continue
                h, p = parse_hostport(listen)
                server = await asyncio.start_server(functools.partial(self._serve_stream, kind), h, p,
                                                    reuse_port=self.reuse_port or None,
                                                    ssl=self._tls_context() if kind == "tls" else None)
                self._servers.append(server)
                self.ports[f"siprec_{kind}"] = server.sockets[0].getsockname()[1]
                self.core.settings.contact[kind] = f"{host or h}:{self.ports[f'siprec_{kind}']}"
        except BaseException:
            await self.close()
            raise
        log.info("siprec recording server listening: %s; media on the RTP ingest's ports, SDP address %s",
                 ", ".join(f"{k.split('_')[1].upper()} {self.core.settings.contact[k.split('_')[1]]}"
                           for k in self.ports), self.core.settings.media_host)
        return dict(self.ports)

    def stop_accepting(self) -> None:
        self.core.accepting = False

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.core.close("shutdown")  # frees every session's ports, summaries go out
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for server in self._servers:
            server.close()
        for writer in list(self._writers.values()):
            writer.close()
        readers = list(self._readers)
        for task in readers:
            task.cancel()
        for task in readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.cfg.tls_cert_path, self.cfg.tls_key_path)
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"ingest.siprec: cannot load tls_cert_path/tls_key_path: {exc}") from None
        return ctx

    # input ---------------------------------------------------------------------------------------
    def receive(self, data: bytes, peer: Peer) -> None:
        try:
            sends = self.core.receive(data, peer, self.clock.monotonic())
        except Exception:  # a bug in the core must cost one message, not the listener
            self.drop("internal_error")
            log.exception("siprec: message from %s failed", peer.addr)
            sends = []
        self._deliver(sends)
        self._arm()

    def _deliver(self, sends: list[Send]) -> None:
        for s in sends:
            if s.peer.transport == "udp":
                if self._udp is not None:
                    self._udp.sendto(s.data, s.peer.addr)
            else:
                writer = self._writers.get(s.peer.conn)
                if writer is None or writer.is_closing():
                    self.drop("connection_gone")
                else:
                    writer.write(s.data)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - self.clock.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay + 0.001, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self._deliver(self.core.poll(self.clock.monotonic()))
        except Exception:
            self.drop("internal_error")
            log.exception("siprec: timer step failed")
        self._arm()

    async def _serve_stream(self, transport: str, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._writers) >= MAX_CONNECTIONS:
            self.drop("too_many_connections")
            writer.close()
            return
        self._next_conn += 1
        conn = self._next_conn
        addr = writer.get_extra_info("peername")
        peer = Peer(transport, (addr[0], addr[1]), conn)
        self._writers[conn] = writer
        self._readers.add(task)
        framer = StreamFramer()
        try:
            while True:
                async with asyncio.timeout(self.cfg.session_timeout_s + 60):  # a silent peer is let go
                    data = await reader.read(READ_BYTES)
                if not data:
                    break
                try:
                    messages = framer.feed(data)
                except SipError as exc:
                    self.drop(exc.reason)
                    log.info("siprec: %s stream from %s closed: %s", transport.upper(), addr, exc)
                    break
                for message in messages:
                    self.receive(message, peer)
                await writer.drain()
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            self._writers.pop(conn, None)
            self._readers.discard(task)
            writer.close()
