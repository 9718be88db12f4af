"""One websocket fork dialect on the shared listener: the thin asyncio shell around its sans-I/O parser.

Per connection: upgrade (capacity, then the dialect's auth: refusals are HTTP answers before any
socket exists: 503 when full or draining, 401 on bad credentials) → each message goes to the
dialect's parser → its events go through `ForkCall` to the call layer → replies are sent on the
socket → a fatal problem closes with the parser's close code (1002 protocol, 1003 unsupported
format, 1008 unauthorized/identity, 1009 too big), a refused admission with 1013, the end of the call
with 1000. A socket that has not started a call within `start_timeout_s` is closed 1008 (`no_start`),
unless it was an AudioHook probe (answered, never a call). One connection's trouble never touches
another: a handler error is logged, counted (`handler_error`) and closes only that socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from daemon.calls.api import CallAdmission
from daemon.clock import Clock
from daemon.ingest.forks.events import ForkEvent
from daemon.ingest.websocket.driver import ForkCall
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.forks")

#: a socket that has started no call by then is not speaking the dialect
START_TIMEOUT_S = 10.0


class WsForkParser(Protocol):
    """What every websocket dialect's parser offers (daemon.ingest.forks.*)."""

    @property
    def done(self) -> bool: ...

    def receive_text(self, text: str) -> list[ForkEvent]: ...

    def receive_binary(self, data: bytes) -> list[ForkEvent]: ...

    def connection_closed(self) -> list[ForkEvent]: ...


@dataclass(frozen=True)
class Refusal:
    """An upgrade refused before it happens: HTTP `status`, drop `reason` counted, extra headers."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Dialect:
    """A dialect's wiring: its parser per connection (given the upgrade request and the rest of the
    path below the route's path), its upgrade check, its subprotocols and whether it may deflate."""

    name: str
    path: str
    max_calls: int
    make_parser: Callable[[Request, str], WsForkParser]
    authorize: Callable[[Request], Refusal | None] = lambda _request: None
    subprotocols: tuple[str, ...] = ()
    compression: bool = False


class ForkWebsocketIngest:
    """A `WebsocketRoute` serving one dialect."""

    def __init__(self, dialect: Dialect, admission: CallAdmission, metrics: Metrics, clock: Clock, *,
                 start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.dialect = dialect
        self.admission = admission
        self.metrics = metrics
        self.clock = clock
        self.start_timeout_s = start_timeout_s
        self._accepting = True
        self._calls: set[ForkCall] = set()

    # WebsocketRoute ------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.dialect.path

    @property
    def subprotocols(self) -> Sequence[str]:
        return self.dialect.subprotocols

    @property
    def compression(self) -> bool:
        return self.dialect.compression

    @property
    def sync_messages(self) -> bool:
        return False  # the fork drivers read with recv(); their calls are fewer and their frames larger

    @property
    def name(self) -> str:
        return self.dialect.name

    @property
    def open_connections(self) -> int:
        return len(self._calls)

    def stop_accepting(self) -> None:
        """New upgrades get HTTP 503; connections already open go on."""
        self._accepting = False

    def end_all(self, reason: str) -> None:
        for call in list(self._calls):
            call.end(reason)

    def check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        name = self.dialect.name
        if not self._accepting:
            self.metrics.calls_refused.labels(name, "shutting_down").inc()
            return connection.respond(503, "Not accepting calls\n")
        if len(self._calls) >= self.dialect.max_calls:
            self.metrics.calls_refused.labels(name, "ingest_max_calls").inc()
            return connection.respond(503, "Too many streams\n")
        try:
            refusal = self.dialect.authorize(request)
        except Exception:
            log.exception("%s upgrade check failed", name)
            refusal = Refusal(500, "handler_error")
        if refusal is None:
            return None
        self.metrics.drops.labels(name, refusal.reason).inc()
        log.warning("%s upgrade refused: %s (HTTP %d)", name, refusal.reason, refusal.status)
        response = connection.respond(refusal.status, f"{refusal.reason}\n")
        for header, value in refusal.headers:
            response.headers[header] = value
        return response

    async def handle(self, ws: ServerConnection) -> None:
        call = ForkCall(self.dialect.name, self.admission, self.metrics, lambda: self._accepting)
        self._calls.add(call)
        try:
            assert ws.request is not None  # the handler runs after the handshake
            tail = ws.request.path.split("?", 1)[0][len(self.dialect.path):].strip("/")
            parser = self.dialect.make_parser(ws.request, tail)
            reason = await self._run(ws, parser, call)
            call.end(reason)
        except Exception:
            log.exception("%s connection failed", self.dialect.name, extra={"call_id": call.call_id or "-"})
            self.metrics.drops.labels(self.dialect.name, "handler_error").inc()
            call.end("error")
            await ws.close(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            call.end("disconnected")
            self._calls.discard(call)

    async def _run(self, ws: ServerConnection, parser: WsForkParser, call: ForkCall) -> str:
        """Read until the call ends or the socket closes; returns the call's end reason."""
        name = self.dialect.name
        deadline = asyncio.get_running_loop().time() + self.start_timeout_s
        while True:
            try:
                if call.handle is None and not _is_probe(parser):
                    async with asyncio.timeout_at(deadline):
                        message = await ws.recv()
                else:
                    message = await ws.recv()
            except TimeoutError:
                self.metrics.drops.labels(name, "no_start").inc()
                await ws.close(CloseCode.POLICY_VIOLATION, "no call started")
                return "no_start"
            except ConnectionClosed as exc:
                return self._closed(exc, parser, call)
            now = self.clock.monotonic()
            events = parser.receive_text(message) if isinstance(message, str) else parser.receive_binary(message)
            actions = call.apply(events, now)
            try:
                for payload in actions.replies:
                    await ws.send(payload)
            except ConnectionClosed as exc:  # the socket closed while we answered
                return self._closed(exc, parser, call)
            if actions.close is not None:
                code, reason = actions.close
                await ws.close(code, reason[:120])
                return reason

    def _closed(self, exc: ConnectionClosed, parser: WsForkParser, call: ForkCall) -> str:
        """The socket is closed (by the peer, or by websockets for an oversized message: counted)."""
        call.apply(parser.connection_closed(), self.clock.monotonic())  # nothing can be sent any more
        if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
            self.metrics.drops.labels(self.dialect.name, "oversize").inc()
            return "oversize"
        return "disconnected"


def _is_probe(parser: WsForkParser) -> bool:
    """An AudioHook connection probe was answered: no call will come, the client closes it."""
    return bool(getattr(parser, "probe", False))


__all__ = ["START_TIMEOUT_S", "Dialect", "ForkWebsocketIngest", "Refusal", "WsForkParser"]
