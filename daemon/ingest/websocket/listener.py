"""The one websocket server every websocket dialect shares, told apart by the request path.

`[ingest.websocket] listen` is bound once (with SO_REUSEPORT when the workers of a host share it);
each enabled dialect registers a `WebsocketRoute` for its path. A request whose path is a route's
path, or below it ("<path>/<anything>"), goes to that route; any other path gets HTTP 404. Per route:
the upgrade check (capacity, auth: an HTTP response refuses before the upgrade), the subprotocol
selected from the client's offer, and whether per-message deflate may be negotiated (off unless the
route asks: a compression context per socket costs memory per call).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import Protocol

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.extensions.permessage_deflate import enable_server_permessage_deflate
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from daemon.configingest import WebsocketIngestConfig
from daemon.configschema import parse_hostport
from daemon.ingest.websocket.connection import MediaConnection

log = logging.getLogger("spoofwatch.ingest.websocket")


class WebsocketRoute(Protocol):
    """One dialect's share of the listener."""

    @property
    def path(self) -> str: ...

    @property
    def subprotocols(self) -> Sequence[str]:
        """Subprotocols this dialect selects, in preference order, when the client offers one."""
        ...

    @property
    def compression(self) -> bool: ...

    def check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        """An HTTP response refuses the upgrade (404, 401, 403, 503); None accepts it."""
        ...

    async def handle(self, ws: ServerConnection) -> None:
        """Serve one accepted socket until it closes; never raises for one call's trouble."""
        ...

    def stop_accepting(self) -> None: ...

    @property
    def sync_messages(self) -> bool:
        """True: the route takes each message synchronously through `MediaConnection.set_message_sink`
        (its handler never calls `recv()`); False: the handler reads with `recv()`."""
        ...

    def end_all(self, reason: str) -> None:
        """End every call this route has open (their sockets are closed by the listener)."""
        ...


def route_matches(route_path: str, request_path: str) -> bool:
    return request_path == route_path or request_path.startswith(route_path.rstrip("/") + "/")


class WebsocketListener:
    """Owns the websockets server; routes own their connections' state. `stop_accepting()` and
    `close()` have the semantics of every ingest (see daemon/ingests.py)."""

    def __init__(self, cfg: WebsocketIngestConfig, *, reuse_port: bool = False) -> None:
        self.cfg = cfg
        self.reuse_port = reuse_port
        self.routes: list[WebsocketRoute] = []
        self._server: Server | None = None
        self.port = 0

    def add(self, route: WebsocketRoute) -> None:
        self.routes.append(route)

    def route_for(self, path: str) -> WebsocketRoute | None:
        path = path.split("?", 1)[0]
        # the longest matching path wins ("/a/b" before "/a")
        best: WebsocketRoute | None = None
        for route in self.routes:
            if route_matches(route.path, path) and (best is None or len(route.path) > len(best.path)):
                best = route
        return best

    async def start(self) -> int:
        host, port = parse_hostport(self.cfg.listen)
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=self.cfg.max_frame_bytes,
            compression=None,  # negotiated per route in _process_request
            server_header=None,
            reuse_port=self.reuse_port,
            # media forks send small frames that are handled as they arrive: a short queue caps what a
            # stalled handler can hold per connection (4 × max_size instead of 16 ×)
            max_queue=4,
            create_connection=MediaConnection,
        )
        sock: socket.socket = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("websocket ingest listening on %s:%d (%s)", host, self.port,
                 ", ".join(r.path for r in self.routes))
        return self.port

    def stop_accepting(self) -> None:
        for route in self.routes:
            route.stop_accepting()

    async def close(self, timeout: float = 5.0) -> None:
        """End every route's calls (reason "shutdown"), close the sockets with 1001, wait for handlers."""
        for route in self.routes:
            route.stop_accepting()
            route.end_all("shutdown")
        if self._server is None:
            return
        self._server.close(close_connections=True)
        try:
            async with asyncio.timeout(timeout):
                await self._server.wait_closed()
        except TimeoutError:
            log.warning("websocket ingest: sockets still open after %.1f s", timeout)

    # handshake ---------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        route = self.route_for(request.path)
        if route is None:
            return connection.respond(404, "Not Found\n")
        protocol: ServerProtocol = connection.protocol
        if route.compression:
            protocol.available_extensions = enable_server_permessage_deflate(None)
        wanted = tuple(route.subprotocols)
        if wanted:
            # Per-connection choice, the way ServerProtocol binds its own select_subprotocol argument.
            def select(_protocol: ServerProtocol, offered: Sequence[Subprotocol]) -> Subprotocol | None:
                for name in wanted:
                    if name in offered:
                        return Subprotocol(name)
                return None

            setattr(protocol, "select_subprotocol", select.__get__(protocol, ServerProtocol))  # noqa: B010
        if isinstance(connection, MediaConnection):
            connection.sync_messages = route.sync_messages
        return route.check_upgrade(connection, request)

    async def _handle(self, ws: ServerConnection) -> None:
        route = self.route_for(ws.request.path if ws.request is not None else "")
        if route is None:  # cannot happen: the handshake refused it
            await ws.close(1011, "no route")
            return
        await route.handle(ws)


__all__ = ["WebsocketListener", "WebsocketRoute", "route_matches"]
