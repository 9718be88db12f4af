"""The supervisor of `[process] workers > 1`: starts N worker processes and owns no call.

- Each worker is `spoofwatch run --worker i --workers N` (a fresh interpreter: no gRPC object exists in
  the supervisor, so none crosses a fork) with its own sd_notify socket, through which it reports READY,
  its private ports, STOPPING and a watchdog ping.
- A worker that exits, or stops pinging for WORKER_WATCHDOG_S, is restarted with backoff (1 s doubling
  to 30 s, jittered; reset after a minute up) without touching the others; its outbox partition is the same, so it
  re-delivers its own pending events.
- SIGTERM/SIGINT: STOPPING=1, /readyz 503, SIGTERM to every worker (each drains its calls and delivers its
  summaries), wait, exit. SIGHUP: the file is validated first, then every worker reloads it.
- sd_notify stays truthful: READY when every worker is ready, STATUS with the worker count, WATCHDOG only
  while every worker is alive and pinging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from daemon.config import Config, ConfigError, load_config, parse_hostport
from daemon.configingest import websocket_enabled
from daemon.ops.supervise import Backoff
from daemon.ops.systemd import SdNotifier
from daemon.workers.front import Front, WorkersView
from daemon.workers.notify import NotifySocket, WorkerReport
from daemon.workers.orphan import SUPERVISOR_PID_ENV
from daemon.workers.plan import outbox_partitions, reserve_shared_port, worker_config

log = logging.getLogger("spoofwatch.workers")

WORKER_WATCHDOG_S = 20.0   # a worker pings every 10 s; one silent for 20 s is stuck and is restarted
STARTUP_GRACE_S = 60.0     # time a new worker has to say READY=1
STABLE_AFTER_S = 60.0      # a worker up this long starts its next backoff from the shortest delay again


@dataclass
class Worker:
    index: int
    notify: NotifySocket
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    #: 1 s doubling to 30 s, jittered so workers that die together do not restart in lockstep
    backoff: Backoff = field(default_factory=lambda: Backoff(1.0, 30.0))
    exits: list[int] = field(default_factory=list)

    @property
    def report(self) -> WorkerReport:
        return self.notify.report

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class WorkerSupervisor:
    def __init__(self, cfg: Config, *, config_path: str | None, count: int,
                 environ: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.count = count
        self.environ = dict(os.environ if environ is None else environ)
        self.notifier = SdNotifier.from_env(self.environ)
        self.workers: list[Worker] = []
        self.stopping = False
        self._stop = asyncio.Event()
        self._runtime_dir = ""
        self._tasks: list[asyncio.Task[None]] = []
        self.front: Front | None = None
        #: shared listeners: name → the concrete HOST:PORT every worker binds with SO_REUSEPORT
        self.shared: dict[str, str] = {}
        self._placeholders: list[socket.socket] = []

    # worker processes --------------------------------------------------------------------------
    def _argv(self, index: int) -> list[str]:
        argv = [sys.executable, "-m", "daemon.cli", "run", "--worker", str(index), "--workers", str(self.count)]
        for name, listen in self.shared.items():
            argv += ["--shared", f"{name}={listen}"]
        if self.config_path is not None:
            argv += ["--config", self.config_path]
        return argv

    def _worker_env(self, worker: Worker) -> dict[str, str]:
        env = {k: v for k, v in self.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["NOTIFY_SOCKET"] = worker.notify.path
        env["WATCHDOG_USEC"] = str(int(WORKER_WATCHDOG_S * 1_000_000))  # it pings at half: every 10 s
        env["SPOOFWATCH_WORKER"] = str(worker.index)
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        return env

    async def _spawn(self, worker: Worker) -> None:
        worker.notify.report = WorkerReport()  # the fresh process starts unknown
        worker.started_at = time.monotonic()
        worker.proc = await asyncio.create_subprocess_exec(*self._argv(worker.index), env=self._worker_env(worker))
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    async def _watch(self, worker: Worker) -> None:
        """Owns one worker for the supervisor's life: waits for its exit and restarts it with backoff."""
        while True:
            assert worker.proc is not None
            rc = await worker.proc.wait()
            worker.exits.append(rc)
            if self.stopping:
                return
            up_for = time.monotonic() - worker.started_at
            if up_for >= STABLE_AFTER_S:
                worker.backoff.reset()
            delay = worker.backoff.next_delay()
            log.error("worker %d exited with %s after %.1f s; restarting in %.1f s", worker.index, rc, up_for, delay)
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
                return  # stopping while waiting to restart
            except TimeoutError:
                pass
            worker.restarts += 1
            await self._spawn(worker)

    def _stuck(self, worker: Worker, now: float) -> bool:
        r = worker.report
        if not r.ready:
            return now - worker.started_at > STARTUP_GRACE_S
        return not r.stopping and now - r.last_watchdog > WORKER_WATCHDOG_S

    # what the front and systemd are told -------------------------------------------------------
    def ready_ports(self) -> dict[int, dict[str, int]]:
        return {w.index: w.report.ports for w in self.workers if w.alive and w.report.ready and w.report.ports}

    def unhealthy(self) -> list[str]:
        now = time.monotonic()
        out = []
        for w in self.workers:
            if not w.alive:
                out.append(f"worker {w.index}: not running (restarts {w.restarts})")
            elif self._stuck(w, now):
                out.append(f"worker {w.index}: no watchdog ping")
        return out

    def own_metrics(self) -> list[Metric]:
        up = GaugeMetricFamily("spoofwatch_workers_up", "Worker processes running and ready")
        up.add_metric([], len(self.ready_ports()))
        configured = GaugeMetricFamily("spoofwatch_workers", "Worker processes configured")
        configured.add_metric([], self.count)
        restarts = CounterMetricFamily("spoofwatch_worker_restarts", "Worker processes restarted after an exit",
                                       labels=["worker"])
        for w in self.workers:
            restarts.add_metric([str(w.index)], w.restarts)
        return [up, configured, restarts]

    def describe(self) -> dict[int, dict[str, object]]:
        return {w.index: {"pid": w.proc.pid if w.proc is not None else None, "alive": w.alive,
                          "ready": w.report.ready, "restarts": w.restarts, "ports": dict(w.report.ports),
                          "status": w.report.status} for w in self.workers}

    def _status(self) -> str:
        return f"{len(self.ready_ports())}/{self.count} workers ready" + (" (stopping)" if self.stopping else "")

    # lifecycle ---------------------------------------------------------------------------------
    async def _start(self) -> None:
        base = self.environ.get("RUNTIME_DIRECTORY", "").split(":")[0] or None
        self._runtime_dir = tempfile.mkdtemp(prefix="spoofwatch-workers-", dir=base)
        for i in range(self.count):  # e.g. an RTP range too small to split: refuse before starting anyone
            try:
                worker_config(self.cfg, i, self.count)
            except ValueError as exc:
                raise ConfigError(f"{self.cfg.source}: {exc}") from None
        self._warn_orphan_partitions()
        if websocket_enabled(self.cfg.ingest):  # Twilio and every websocket fork dialect: one shared listener
            placeholder, self.shared["websocket"] = reserve_shared_port(self.cfg.ingest.websocket.listen)
            self._placeholders.append(placeholder)
        if self.cfg.ingest.audiosocket.enabled:  # AudioSocket's TCP listener is shared the same way
            placeholder, self.shared["audiosocket"] = reserve_shared_port(self.cfg.ingest.audiosocket.listen)
            self._placeholders.append(placeholder)
        for i in range(self.count):
            notify = NotifySocket(str(Path(self._runtime_dir) / f"worker-{i}.sock"), WorkerReport(), time.monotonic)
            await notify.open()
            worker = Worker(i, notify)
            self.workers.append(worker)
            await self._spawn(worker)
            self._tasks.append(asyncio.create_task(self._watch(worker), name=f"worker-{i}"))
        view = WorkersView(self.ready_ports, count=self.count, stopping=lambda: self.stopping,
                           unhealthy=self.unhealthy, own_metrics=self.own_metrics, describe=self.describe)
        self.front = Front(self.cfg, view)
        ports = dict(await self.front.start())
        ports.update({name: parse_hostport(listen)[1] for name, listen in self.shared.items()})
        if "websocket" in ports and self.cfg.ingest.twilio.enabled:
            ports["twilio"] = ports["websocket"]
        log.info("supervisor: %d workers; public listeners %s", self.count, ports, extra={"ports": ports})

    def _warn_orphan_partitions(self) -> None:
        """Partitions of workers beyond the configured count (after lowering `workers`) are not read by
        anyone: say so, with how to deliver them."""
        path = Path(self.cfg.outbox.path)
        state_dir = self.environ.get("STATE_DIRECTORY")
        if state_dir and not path.is_absolute():
            path = Path(state_dir.split(":")[0]) / path
        for part in outbox_partitions(path):
            index = part.stem[len(path.stem) + 1:]
            if part == path or int(index) >= self.count:
                log.warning("outbox file %s belongs to no worker (workers = %d): events still pending there are "
                            "delivered only by a daemon using it (run `spoofwatch run` with [outbox] path set to it "
                            "until `spoofwatch outbox --path %s list --state pending` is empty)", part, self.count,
                            part)

    async def _supervise(self) -> None:
        """Status, worker watchdog, and systemd's watchdog: once a second."""
        told_ready = False
        interval = self.notifier.watchdog_interval_s()
        last_ping = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            for w in self.workers:
                if w.alive and self._stuck(w, now):
                    log.error("worker %d is stuck (no watchdog ping): killing it", w.index)
                    assert w.proc is not None
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.kill()
            all_ready = len(self.ready_ports()) == self.count
            if all_ready and not told_ready:
                self.notifier.ready(status=self._status())
                told_ready = True
                log.info("all %d workers ready", self.count)
            else:
                self.notifier.status(self._status())
            if interval is not None and now - last_ping >= interval and not self.unhealthy():
                self.notifier.watchdog()
                last_ping = now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._stop.wait()

    def _signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.alive:
                assert w.proc is not None
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    def reload(self) -> bool:
        if self.config_path is None:
            log.warning("SIGHUP ignored: the daemon runs on built-in defaults (no --config)")
            return False
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, the workers keep the running config: %s", exc)
            return False
        if new.process != self.cfg.process:
            log.warning("[process] changes apply after a restart")
        self.notifier.reloading()
        self._signal_all(signal.SIGHUP)
        self.notifier.ready(status=self._status())
        return True

    async def _shutdown(self) -> None:
        self.stopping = True
        self.notifier.stopping()
        self._stop.set()
        log.info("stopping: draining every worker")
        self._signal_all(signal.SIGTERM)
        d = self.cfg.daemon
        grace = d.drain_timeout_s + d.final_results_timeout_s + 15.0
        procs = [w.proc for w in self.workers if w.alive and w.proc is not None]
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(p.wait() for p in procs))
        except TimeoutError:
            log.error("workers still running %.0f s after SIGTERM: killing them", grace)
            self._signal_all(signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in procs))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.front is not None:
            await self.front.close()
        for w in self.workers:
            w.notify.close()
        for placeholder in self._placeholders:
            placeholder.close()
        shutil.rmtree(self._runtime_dir, ignore_errors=True)
        log.info("stopped")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self._start()
            await self._supervise()
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
            try:
                await self._shutdown()  # a second SIGTERM meanwhile changes nothing: the drain goes on
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        failed = [w.index for w in self.workers if w.exits and w.exits[-1] not in (0, -signal.SIGTERM)]
        return 1 if failed else 0
