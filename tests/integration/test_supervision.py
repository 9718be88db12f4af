"""A daemon (in this process: the test makes one of its supervised tasks crash) reports the truth
while a core task is down: /healthz answers 503 naming the task, and systemd gets no WATCHDOG=1
ping (a real $NOTIFY_SOCKET) but a STATUS saying why; both recover once the task runs again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from daemon.app import Daemon
from daemon.config import parse_config
from tests.conftest import TEST_API_KEY, TEST_CID


@contextlib.contextmanager
def notify_socket(path: str) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def next_datagram(sock: socket.socket, predicate: Any, timeout: float = 10.0) -> list[str]:
    """Every datagram up to and including the first that satisfies `predicate`."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    async with asyncio.timeout(timeout):
        while True:
            seen.append((await loop.sock_recv(sock, 4096)).decode())
            if predicate(seen[-1]):
                return seen


async def healthz(port: int) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/healthz") as r:
        return r.status, await r.json()


async def test_a_core_task_down_turns_healthz_503_and_stops_the_watchdog(tmp_path: Path) -> None:
    cfg = parse_config({"http": {"listen": "127.0.0.1:0"}, "outbox": {"path": str(tmp_path / "o.sqlite3")},
                        "ingest": {"twilio": {"enabled": False}, "whip": {"enabled": False}}})
    path = str(tmp_path / "notify.sock")
    with notify_socket(path) as sock:
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid()),
               "SPOOFWATCH_CID": str(TEST_CID), "SPOOFWATCH_API_KEY": TEST_API_KEY}
        d = Daemon(cfg, environ=env)
        await d.start()
        try:
            await next_datagram(sock, lambda m: m == "WATCHDOG=1")  # healthy: pings
            status, body = await healthz(d.ports["http"])
            assert status == 200 and body["status"] == "ok" and body["tasks"]["webhook-sender"]["state"] == "running"

            d.supervisor.initial_s, d.supervisor.cap_s = 0.05, 0.2
            crash = True
            up = asyncio.Event()

            async def fragile() -> None:
                if crash:
                    raise OSError(5, "Input/output error")
                up.set()
                await asyncio.Event().wait()

            d.supervisor.spawn("fragile", fragile)
            async with asyncio.timeout(10):
                while (reply := await healthz(d.ports["http"]))[0] != 503:  # noqa: ASYNC110 (polls /healthz)
                    await asyncio.sleep(0.01)
            status, body = reply
            assert body["status"] == "unhealthy"
            assert "Input/output error" in body["down"]["fragile"]
            told = await next_datagram(sock, lambda m: m.startswith("STATUS=unhealthy"))
            assert "fragile down" in told[-1]
            # keep crashing for a few more restarts (several watchdog ticks): still no ping
            restarts = d.supervisor.tasks["fragile"].restarts
            async with asyncio.timeout(10):
                while d.supervisor.tasks["fragile"].restarts < restarts + 3:  # noqa: ASYNC110 (supervisor state)
                    await asyncio.sleep(0.01)
            assert d.supervisor.problem() is not None  # what the watchdog asks: unhealthy
            with contextlib.suppress(BlockingIOError):
                while True:
                    assert sock.recv(4096) != b"WATCHDOG=1"
            assert (await healthz(d.ports["http"]))[0] == 503
            assert d.metrics.registry.get_sample_value("spoofwatch_task_up", {"task": "fragile"}) == 0

            crash = False  # the fault clears: the next restart stays up
            async with asyncio.timeout(10):
                await up.wait()
            await next_datagram(sock, lambda m: m == "WATCHDOG=1")
            status, body = await healthz(d.ports["http"])
            assert status == 200 and body["tasks"]["fragile"]["restarts"] >= 4
            assert (d.metrics.registry.get_sample_value("spoofwatch_task_restarts_total", {"task": "fragile"})
                    or 0) >= 4
        finally:
            await d.shutdown()
