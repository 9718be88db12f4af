"""Media-fork load generator connections: where a call goes (`Target`), connecting and closing. The
socket is the Twilio loadgen's `wsclient.CallSocket` (a websocket client offering subprotocols and
handing the server's text frames to a callback, or a raw TCP connection for AudioSocket)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from daemon.loadgen.wsclient import CallSocket
from daemon.loadgen.wsclient import wire as wire

ForkSocket = CallSocket


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


