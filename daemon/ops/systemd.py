"""sd_notify in a few lines of stdlib: READY, STATUS, WATCHDOG, STOPPING, RELOADING to $NOTIFY_SOCKET
(a path, or '@name' for the abstract namespace). A no-op when not run by systemd."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

log = logging.getLogger("spoofwatch.systemd")


class SdNotifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self._watchdog_usec = watchdog_usec
        self.sent: list[str] = []  # what was sent, for /healthz and tests

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SdNotifier:
        env = os.environ if environ is None else environ
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if raw and raw.isdigit() and (not pid or pid == str(os.getpid())):
            usec = int(raw)
        return cls(env.get("NOTIFY_SOCKET") or None, usec)

    def notify(self, **fields: str) -> bool:
        if not self.address:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items())
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(payload.encode(), addr)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        self.sent.append(payload)
        del self.sent[:-20]
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify(READY="1", **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self) -> bool:
        return self.notify(STOPPING="1", STATUS="stopping: draining calls")

    def reloading(self) -> bool:
        return self.notify(RELOADING="1", MONOTONIC_USEC=str(time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG="1")

    def watchdog_interval_s(self) -> float | None:
        """Half of WatchdogSec, when systemd asked this process for watchdog pings."""
        if not self.address or not self._watchdog_usec:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    async def run_watchdog(self, is_healthy: Callable[[], bool], why: Callable[[], str] | None = None) -> None:
        """Ping at half the interval while healthy: a stuck event loop, or a core task that stays down,
        stops the pings and systemd restarts us. While unhealthy, STATUS says `why()` (once per change)."""
        interval = self.watchdog_interval_s()
        if interval is None:
            return
        told = ""
        while True:
            if is_healthy():
                self.watchdog()
                told = ""
            elif why is not None:
                text = why()
                if text != told:
                    self.status(text)
                    told = text
            await asyncio.sleep(interval)
