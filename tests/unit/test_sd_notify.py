"""sd_notify against a real AF_UNIX datagram socket: READY, STATUS, WATCHDOG at half the interval,
STOPPING, RELOADING; abstract sockets; WATCHDOG_PID for another process; no socket = no-op."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from daemon.ops.systemd import SdNotifier


def bound(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    return s


def drain(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


def test_ready_status_stopping_reloading(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with bound(path) as sock:
        n = SdNotifier.from_env({"NOTIFY_SOCKET": path})
        assert n.ready("2 calls") and n.status("x") and n.reloading() and n.stopping()
        msgs = drain(sock)
    assert msgs[0] == "READY=1\nSTATUS=2 calls" and msgs[1] == "STATUS=x"
    assert msgs[2].startswith("RELOADING=1\nMONOTONIC_USEC=") and msgs[3].startswith("STOPPING=1")


def test_abstract_socket() -> None:
    name = f"spoofwatch-test-{os.getpid()}"
    with bound("\0" + name) as sock:
        assert SdNotifier.from_env({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert drain(sock) == ["WATCHDOG=1"]


def test_no_socket_is_a_noop_and_watchdog_pid_respected() -> None:
    assert not SdNotifier.from_env({}).ready()
    other = SdNotifier.from_env({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "1000000",
                                 "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval_s() is None


async def test_watchdog_pings_at_half_the_interval_while_healthy(tmp_path: Path) -> None:
    path = str(tmp_path / "wd.sock")
    with bound(path) as sock:
        await _watchdog(path, sock)


async def _watchdog(path: str, sock: socket.socket) -> None:
    n = SdNotifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval_s() == 0.1
    healthy = True
    task = asyncio.create_task(n.run_watchdog(lambda: healthy))
    await asyncio.sleep(0.45)
    pings = drain(sock)
    healthy = False
    await asyncio.sleep(0.25)
    after = drain(sock)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert pings.count("WATCHDOG=1") >= 3 and after == []  # unhealthy: no pings, systemd will act
