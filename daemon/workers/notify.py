"""The supervisor's ear for its workers: each worker gets its own sd_notify socket (NOTIFY_SOCKET), so a
worker says READY=1, STATUS=…, WATCHDOG=1 and STOPPING=1 exactly as it would to systemd, plus the loopback
ports of its private listeners (X_SPOOFWATCH_PORTS, JSON), and the supervisor knows which worker spoke by
the socket it arrived on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("spoofwatch.workers")

PORTS_KEY = "X_SPOOFWATCH_PORTS"


@dataclass
class WorkerReport:
    """What one worker last said (sans-I/O: fed datagrams, read by the supervisor)."""

    ready: bool = False
    stopping: bool = False
    status: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    last_watchdog: float = 0.0
    malformed: int = 0

    def feed(self, datagram: bytes, now: float) -> None:
        for line in datagram.decode(errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if not sep:
                self.malformed += 1
                continue
            if key == "READY" and value == "1":
                self.ready = True
                self.last_watchdog = now
            elif key == "STOPPING" and value == "1":
                self.stopping, self.ready = True, False
            elif key == "STATUS":
                self.status = value
            elif key == "WATCHDOG" and value == "1":
                self.last_watchdog = now
            elif key == PORTS_KEY:
                try:
                    ports = json.loads(value)
                    self.ports = {str(k): int(v) for k, v in ports.items()}
                except (ValueError, TypeError, AttributeError):
                    self.malformed += 1


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.on_datagram(data)


class NotifySocket:
    """One AF_UNIX datagram socket at `path`, feeding a WorkerReport."""

    def __init__(self, path: str, report: WorkerReport, clock: Callable[[], float]) -> None:
        self.path = path
        self.report = report
        self.clock = clock
        self._transport: asyncio.DatagramTransport | None = None

    async def open(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a socket file left by a previous run
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(lambda data: self.report.feed(data, self.clock())), sock=sock)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
