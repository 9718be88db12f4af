"""Supervision of the daemon's long-lived tasks (webhook sender, watchdog, status, ingests...).

A supervised task that raises (or returns: a long-lived task that ends has failed too) is logged
with its traceback, counted in `spoofwatch_task_restarts_total{task}`, and started again after a
jittered, capped, growing delay (`Backoff`, sans-I/O); a task that then runs `stable_s` without
failing starts over from the shortest delay. While a task waits to be restarted it is *down*:
`down()` says which and why, for `/healthz` (503) and the systemd watchdog (no ping, STATUS says
why). Servers that own sockets rather than a task can `watch` a probe instead.

The supervisor owns every task it starts: `aclose()` cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.clock import Clock
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.supervise")


class Backoff:
    """Growing delays (sans-I/O): initial, initial × factor, ... capped at `cap_s`, each ±`jitter`."""

    def __init__(self, initial_s: float = 0.5, cap_s: float = 10.0, *, factor: float = 2.0, jitter: float = 0.2,
                 rng: random.Random | None = None) -> None:
        if initial_s <= 0 or cap_s < initial_s or factor < 1 or not 0 <= jitter < 1:
            raise ValueError("need 0 < initial_s <= cap_s, factor >= 1 and 0 <= jitter < 1")
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.factor = factor
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.failures = 0

    def next_delay(self) -> float:
        """The delay after one more failure (the cap holds after jitter too)."""
        base = min(self.cap_s, self.initial_s * self.factor ** min(self.failures, 64))
        self.failures += 1
        return min(self.cap_s, base * (1 + self.jitter * (2 * self.rng.random() - 1)))

    def reset(self) -> None:
        self.failures = 0


@dataclass
class TaskStatus:
    """What /healthz shows of one supervised task or watched server."""

    name: str
    core: bool
    state: str = "running"  # running | restarting | down (a watched probe failed) | stopped
    restarts: int = 0
    last_error: str = ""
    changed_at: float = 0.0
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _probe: Callable[[], str | None] | None = field(default=None, repr=False)

    def problem(self) -> str | None:
        if self._probe is not None:
            try:
                return self._probe()
            except Exception as exc:  # a probe that fails says the server is not fine
                return f"probe failed: {type(exc).__name__}: {exc}"
        if self.state == "restarting":
            return f"{self.last_error}; restart {self.restarts} pending"
        return None


class Supervisor:
    def __init__(self, *, clock: Clock, metrics: Metrics | None = None, initial_s: float = 0.5,
                 cap_s: float = 10.0, stable_s: float = 60.0, rng: random.Random | None = None) -> None:
        self.clock = clock
        self.metrics = metrics
        self.initial_s = initial_s
        self.cap_s = cap_s
        self.stable_s = stable_s
        self.rng = rng or random.Random()
        self.tasks: dict[str, TaskStatus] = {}
        self._closing = False

    def spawn(self, name: str, run: Callable[[], Awaitable[Any]], *, core: bool = True) -> None:
        """Run `run()` for the life of the daemon, restarting it whenever it fails. `core`: while it is
        down the daemon is unhealthy (/healthz 503, no watchdog ping)."""
        if name in self.tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        status = TaskStatus(name, core, changed_at=self.clock.monotonic())
        self.tasks[name] = status
        self._set_up(name, True)
        status._task = asyncio.get_running_loop().create_task(self._keep(status, run), name=name)

    def watch(self, name: str, probe: Callable[[], str | None], *, core: bool = True) -> None:
        """A server that owns sockets rather than a task: `probe()` returns None while it is fine, or
        what is wrong. It is asked on each /healthz request and watchdog tick (keep it cheap)."""
        if name in self.tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        self.tasks[name] = TaskStatus(name, core, changed_at=self.clock.monotonic(), _probe=probe)

    def down(self, *, core_only: bool = True) -> dict[str, str]:
        """Tasks that are down now, with why."""
        out: dict[str, str] = {}
        for s in self.tasks.values():
            if s.core or not core_only:
                why = s.problem()
                if why is not None:
                    out[s.name] = why
        return out

    def problem(self) -> str | None:
        """One line for systemd's STATUS while a core task is down; None while all are up."""
        down = self.down()
        if not down:
            return None
        return "unhealthy: " + "; ".join(f"{name} down ({why})" for name, why in sorted(down.items()))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        now = self.clock.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for s in self.tasks.values():
            why = s.problem()
            state = "down" if s._probe is not None and why is not None else s.state
            out[s.name] = {"state": state, "core": s.core, "restarts": s.restarts, "last_error": why or s.last_error,
                           "for_s": round(now - s.changed_at, 3)}
        return out

    async def aclose(self) -> None:
        """Cancel every task and wait for them (shutdown)."""
        self._closing = True
        tasks = [s._task for s in self.tasks.values() if s._task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in self.tasks.values():
            if s._task is not None:
                s.state = "stopped"

    def _set_up(self, name: str, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.task_up.labels(name).set(1 if up else 0)

    async def _keep(self, status: TaskStatus, run: Callable[[], Awaitable[Any]]) -> None:
        backoff = Backoff(self.initial_s, self.cap_s, rng=self.rng)
        while True:
            started = self.clock.monotonic()
            try:
                await run()
                error = "exited"  # a long-lived task that ends has failed as surely as one that raises
                log.error("task %s ended; restarting it", status.name)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                log.error("task %s failed; restarting it", status.name, exc_info=exc)
            now = self.clock.monotonic()
            if now - started >= self.stable_s:
                backoff.reset()  # it ran fine for a while: this is a new failure, not a crash loop
            delay = backoff.next_delay()
            status.restarts += 1
            status.state, status.last_error, status.changed_at = "restarting", error, now
            self._set_up(status.name, False)
            if self.metrics is not None:
                self.metrics.task_restarts.labels(status.name).inc()
            await asyncio.sleep(delay)
            status.state, status.changed_at = "running", self.clock.monotonic()
            self._set_up(status.name, True)
