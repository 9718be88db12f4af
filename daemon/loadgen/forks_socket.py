"""Media-fork load generator sockets: a websocket client offering subprotocols (websockets' sans-I/O
`ClientProtocol` over a plain asyncio transport, as `wsclient.CallSocket`) that also hands the
server's text frames to a callback, or a raw TCP connection (AudioSocket)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from daemon.loadgen.forks_frames import Frame
from daemon.loadgen.wsclient import client_frame


def wire(frame: Frame, *, ws: bool) -> bytes:
    """One frame as written to the socket (websocket client frame with the zero mask, or raw bytes)."""
    if isinstance(frame, str):
        return client_frame(frame.encode(), 0x1) if ws else frame.encode()
    return client_frame(frame, 0x2) if ws else frame


# sockets -----------------------------------------------------------------------------------------
class ForkSocket(asyncio.Protocol):
    """A websocket client (websockets' sans-I/O ClientProtocol over a plain transport) offering
    `subprotocols`, or with `url=None` a raw TCP connection. Server text frames go to `on_text`."""

    def __init__(self, url: str | None, headers: dict[str, str] | None = None, subprotocols: tuple[str, ...] = (),
                 on_text: Callable[[str], None] | None = None) -> None:
        from websockets.client import ClientProtocol
        from websockets.typing import Subprotocol
        from websockets.uri import parse_uri

        self.ws = None if url is None else ClientProtocol(
            parse_uri(url), subprotocols=[Subprotocol(s) for s in subprotocols] or None, max_size=2**20)
        self.headers, self.offered, self.on_text = dict(headers or {}), subprotocols, on_text
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_rcvd: tuple[int, str] | None = None
        self.subprotocol: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.ws is None:
            self.opened.set_result(None)
            return
        request = self.ws.connect()
        for name, value in self.headers.items():
            request.headers[name] = value
        self.ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.receive_data(data)
            self._events()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
            self._events()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("connection closed during the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _events(self) -> None:
        from websockets.frames import Frame as WsFrame
        from websockets.frames import Opcode
        from websockets.http11 import Response

        assert self.ws is not None
        for event in self.ws.events_received():
            if isinstance(event, Response) and not self.opened.done():
                self.subprotocol = self.ws.subprotocol
                if self.ws.handshake_exc is not None:
                    self.opened.set_exception(self.ws.handshake_exc)
                elif self.offered and self.subprotocol is None:
                    self.opened.set_exception(ValueError(f"the server selected none of the subprotocols "
                                                         f"{list(self.offered)} (libwebsockets peers hang up)"))
                    self.abort()
                else:
                    self.opened.set_result(None)
            elif isinstance(event, WsFrame) and event.opcode is Opcode.TEXT and self.on_text is not None:
                self.on_text(bytes(event.data).decode("utf-8", "replace"))
            elif isinstance(event, WsFrame) and event.opcode is Opcode.CLOSE and self.ws.close_rcvd is not None:
                self.close_rcvd = (int(self.ws.close_rcvd.code), self.ws.close_rcvd.reason)
        self._flush()

    def _flush(self) -> None:
        if self.ws is None or self.transport is None or self.transport.is_closing():
            return
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self.ws.close_expected() and self.ws.handshake_exc is not None:
            self.transport.close()

    def _open(self) -> bool:
        from websockets.protocol import State

        if self.transport is None or self.transport.is_closing():
            return False
        return self.ws is None or self.ws.state is State.OPEN

    def send_raw(self, data: bytes) -> bool:
        if not self._open():
            return False
        assert self.transport is not None
        self.transport.write(data)
        return True

    def send(self, frames: list[Frame]) -> bool:
        return self.send_raw(b"".join(wire(f, ws=self.ws is not None) for f in frames))

    def write_backlog(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        """Websocket: a normal close (1000) handshake; TCP: half-close, the server closes its side."""
        from websockets.frames import CloseCode
        from websockets.protocol import State

        if self.ws is None:
            if self.transport is not None and not self.transport.is_closing() and self.transport.can_write_eof():
                self.transport.write_eof()
        elif self.ws.state is State.OPEN:
            self.ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


@dataclass
class Target:
    """Where calls go: a websocket URL, or host and port for a TCP dialect."""

    url: str | None = None
    host: str = "127.0.0.1"
    port: int = 0


async def connect(target: Target, headers: dict[str, str], subprotocols: tuple[str, ...],
                  on_text: Callable[[str], None] | None = None) -> ForkSocket:
    loop = asyncio.get_running_loop()
    if target.url is None:
        _, sock = await loop.create_connection(lambda: ForkSocket(None), target.host, target.port)
    else:
        from websockets.uri import parse_uri

        uri = parse_uri(target.url)
        _, sock = await loop.create_connection(lambda: ForkSocket(target.url, headers, subprotocols, on_text),
                                               uri.host, uri.port)
    try:
        await sock.opened
    except BaseException:
        sock.abort()
        raise
    return sock


async def finish_socket(sock: ForkSocket, timeout_s: float) -> None:
    """Close our side and wait (bounded) for the server to close; abort if it does not."""
    sock.close()
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.shield(sock.closed)
    except TimeoutError:
        sock.abort()


