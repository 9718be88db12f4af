"""Asterisk AudioSocket over TCP: the thin asyncio shell around `AudioSocketParser`.

Per connection: Asterisk connects out and sends its UUID frame first (the call id) → the call is
admitted → slin frames feed the one leg, `channel` → a hangup frame, an error frame with the hangup
flag, or the socket closing ends the call. Refusals and closes: beyond `max_calls` open connections,
or while draining, a new connection is closed at once (counted in calls_refused); a frame declaring
more than `max_payload_bytes`, or too many bad frames before the UUID, closes that connection with a
counted drop (`oversize_frame`, `too_many_errors`); no UUID within `start_timeout_s` → closed,
`no_start`. We never send anything: AudioSocket audio back to Asterisk is not ours to make.
The protocol has no authentication: bind `listen` to a private address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from daemon.calls.api import CallAdmission
from daemon.clock import Clock
from daemon.configforks import AudioSocketIngestConfig
from daemon.configschema import parse_hostport
from daemon.ingest.forks.audiosocket import INGEST, AudioSocketParser
from daemon.ingest.websocket.driver import ForkCall
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.audiosocket")

START_TIMEOUT_S = 10.0
READ_BYTES = 65536


class AudioSocketIngest:
    def __init__(self, cfg: AudioSocketIngestConfig, admission: CallAdmission, metrics: Metrics, clock: Clock, *,
                 start_timeout_s: float = START_TIMEOUT_S, reuse_port: bool = False) -> None:
        self.cfg = cfg
        #: SO_REUSEPORT: the workers of one host share the port; a connection (a call) stays on one worker
        self.reuse_port = reuse_port
        self.admission = admission
        self.metrics = metrics
        self.clock = clock
        self.start_timeout_s = start_timeout_s
        self._server: asyncio.Server | None = None
        self._accepting = True
        self._calls: set[ForkCall] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # connection handlers, owned so close() can await them

    async def start(self) -> int:
        host, port = parse_hostport(self.cfg.listen)
        self._server = await asyncio.start_server(self._handle, host, port, reuse_port=self.reuse_port or None)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("audiosocket ingest listening on %s:%d", host, bound)
        return bound

    def stop_accepting(self) -> None:
        """New connections are closed at once; calls already open go on."""
        self._accepting = False

    async def close(self, timeout: float = 5.0) -> None:
        """End open calls (reason "shutdown"), close their connections, wait for the handlers."""
        self._accepting = False
        if self._server is not None:
            self._server.close()
        for call in list(self._calls):
            call.end("shutdown")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=timeout)
            if pending:
                log.warning("audiosocket ingest: %d connections still open after %.1f s", len(pending), timeout)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        return len(self._calls)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if not self._accepting or len(self._calls) >= self.cfg.max_calls:
                reason = "shutting_down" if not self._accepting else "ingest_max_calls"
                self.metrics.calls_refused.labels(INGEST, reason).inc()
                return
            call = ForkCall(INGEST, self.admission, self.metrics, lambda: self._accepting)
            self._calls.add(call)
            try:
                call.end(await self._run(reader, call))
            except asyncio.CancelledError:
                call.end("shutdown")
                raise
            except Exception:
                log.exception("audiosocket connection failed", extra={"call_id": call.call_id or "-"})
                self.metrics.drops.labels(INGEST, "handler_error").inc()
                call.end("error")
            finally:
                call.end("disconnected")
                self._calls.discard(call)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _run(self, reader: asyncio.StreamReader, call: ForkCall) -> str:
        parser = AudioSocketParser(max_payload_bytes=self.cfg.max_payload_bytes, rate_0x10_hz=self.cfg.rate_0x10_hz)
        deadline = asyncio.get_running_loop().time() + self.start_timeout_s
        while True:
            try:
                if call.handle is None:
                    async with asyncio.timeout_at(deadline):
                        data = await reader.read(READ_BYTES)
                else:
                    data = await reader.read(READ_BYTES)
            except TimeoutError:
                self.metrics.drops.labels(INGEST, "no_start").inc()
                return "no_start"
            except ConnectionError:
                data = b""
            now = self.clock.monotonic()
            if not data:
                call.apply(parser.connection_closed(), now)
                return "disconnected"
            actions = call.apply(parser.receive_data(data), now)
            if actions.close is not None:
                return actions.close[1]


__all__ = ["AudioSocketIngest"]
