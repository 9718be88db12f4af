"""The daemon: owns every service task, admits calls, and shuts down in stages.

Start: logging → upstream (embedded simulator unless a target is configured) → channel pool →
outbox + webhook sender → call registry → ingests → ops HTTP → READY=1.
Stop (SIGTERM/SIGINT): readiness off + STOPPING=1 → ingests stop accepting → calls drain up to
drain_timeout_s (tails sent, final results awaited, summaries emitted) → stragglers cut → outbox
flushed → channels, simulator and HTTP closed → exit 0.
Reload (SIGHUP): the policy, webhooks and limits of a valid new config apply without dropping a
call; a bad file is refused and the old config kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from daemon import __version__
from daemon.alerts.outbox import Endpoint, Outbox
from daemon.alerts.redact import redact_url
from daemon.alerts.schedule import RetrySchedule
from daemon.alerts.webhook import WebhookSender
from daemon.calls.registry import CallRegistry
from daemon.calls.session import CallContext, UpstreamLeg
from daemon.clock import Clock, SystemClock
from daemon.config import (
    API_KEY_ENV,
    CID_ENV,
    Config,
    ConfigError,
    UpstreamCredentials,
    load_config,
    parse_hostport,
    upstream_credentials,
)
from daemon.ingests import IngestContext, banner_lines, ingest_limits, start_ingests
from daemon.model import DeepfakeResult, LegRef
from daemon.ops.gc import GcPauseWatch, settle_heap
from daemon.ops.http import OpsHttpServer
from daemon.ops.live import LiveHub
from daemon.ops.live_http import live_routes
from daemon.ops.metrics import Metrics
from daemon.ops.supervise import Supervisor
from daemon.ops.systemd import SdNotifier
from daemon.policy.payloads import upstream_health_data
from daemon.upstream.channels import ChannelPool, use_tls
from daemon.upstream.chunks import replay_chunks_for
from daemon.upstream.health import UpstreamHealth
from daemon.upstream.stream import LegStream
from daemon.workers.plan import WorkerRole

log = logging.getLogger("spoofwatch")

SIMULATOR_BANNER = (
    "UPSTREAM IS THE BUILT-IN SIMULATOR: a test double whose labels come from a 3000 Hz marker-tone rule, "
    "NOT a deepfake detector. Every result is marked simulated. Set [upstream] target to use the real API."
)


class OutboxAlertSink:
    """Commits each event to the outbox (on the outbox thread) before anything is sent, then wakes the
    sender. While the outbox cannot commit, events are held in memory in order, with their ids, and
    committed later (daemon.alerts.commit); nothing here waits for the disk."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def emit(self, event_type: str, data: dict[str, Any], *, decided_at: float | None) -> None:
        d = self._daemon
        assert d.sender is not None

        def committed(event_id: str | None, exc: BaseException | None) -> None:
            if exc is not None:
                return  # dropped (memory bound, or exit before the disk answered): logged and counted there
            d.metrics.alerts.labels(event_type).inc()
            d.live.alert_committed(event_id or "", event_type, data,
                                   [(e.key, redact_url(e.url)) for e in d.endpoints if e.accepts(event_type)])

        d.sender.emit(event_type, data, endpoints=d.endpoints, occurred_at=d.clock.wall(), decided_at=decided_at,
                      on_committed=committed)


def endpoints_from(cfg: Config) -> list[Endpoint]:
    return [Endpoint.from_config(hook) for hook in cfg.webhook]


class Daemon:
    def __init__(self, cfg: Config, *, config_path: str | None = None, clock: Clock | None = None,
                 metrics: Metrics | None = None, environ: Mapping[str, str] | None = None,
                 tune_gc: bool = False, worker: WorkerRole | None = None) -> None:
        self.cfg = cfg
        #: this process's place under a multi-worker supervisor (daemon.workers), else None
        self.worker = worker
        #: freeze the startup heap out of GC scans (daemon.ops.gc): for the process that is the daemon,
        #: not for a Daemon embedded in a test process
        self.tune_gc = tune_gc
        self.metrics = metrics or Metrics()
        self.gc_watch = GcPauseWatch(self.metrics.gc_pause)
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.environ = dict(os.environ if environ is None else environ)
        self.notifier = SdNotifier.from_env(self.environ)
        self.simulator: Any = None
        self.pool: ChannelPool | None = None
        self.outbox: Outbox | None = None
        self.sender: WebhookSender | None = None
        self.registry: CallRegistry | None = None
        self.ingests: list[Any] = []
        self.http: OpsHttpServer | None = None
        self.endpoints: list[Endpoint] = endpoints_from(cfg)
        self.health = UpstreamHealth(self.metrics)
        self.creds: UpstreamCredentials | None = None
        self.upstream_target = ""
        self.simulated = False
        self.ready = False
        self.ports: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._service_tasks: list[asyncio.Task[Any]] = []
        #: owns every long-lived service task: a crash is logged, counted and restarted with backoff, and a
        #: core task that is down shows in /healthz (503) and stops the watchdog pings. Ingests register
        #: here too: `supervisor.spawn(name, coroutine_fn)` for a task, `supervisor.watch(name, probe)` for
        #: a server whose probe returns None while fine, else what is wrong (daemon.ops.supervise).
        self.supervisor = Supervisor(clock=self.clock, metrics=self.metrics)
        self.started = asyncio.Event()
        #: the live operator page's state (daemon.ops.live), fed by the call layer, sender and upstream health
        self.live = LiveHub(self.clock, on_overflow=lambda: self.metrics.drops.labels("ui", "sse_overflow").inc())

    # upstream ----------------------------------------------------------------------------------
    def _credentials(self) -> UpstreamCredentials:
        try:
            return upstream_credentials(self.environ)
        except ConfigError:
            if self.cfg.upstream.target != "embedded":
                raise
            # The embedded simulator accepts whatever credentials this process gives it.
            log.info("%s/%s unset: using one-off local credentials for the embedded simulator", CID_ENV,
                     API_KEY_ENV)
            return UpstreamCredentials(cid=1, api_key="local-" + secrets.token_hex(8))

    async def _start_upstream(self) -> None:
        self.creds = self._credentials()
        up = self.cfg.upstream
        if up.target == "embedded":
            from daemon.upstream.simulator import SimulatorServer

            self.simulator = SimulatorServer(self.cfg.simulator, cid=self.creds.cid, api_key=self.creds.api_key,
                                             clock=self.clock)
            port = await self.simulator.start(self.cfg.simulator.listen)
            self.upstream_target = f"127.0.0.1:{port}"
            self.simulated = True
            self.ports["simulator"] = port
            log.warning(SIMULATOR_BANNER)
        else:
            self.upstream_target = up.target
        self.metrics.upstream_simulated.set(1 if self.simulated else 0)
        self.live.upstream_state(target=self.upstream_target, simulated=self.simulated, up=True, detail="")
        tls = use_tls(up, self.upstream_target, embedded_tls=self.simulated and bool(self.cfg.simulator.tls_cert_file))
        self.pool = ChannelPool(self.upstream_target, tls=tls, size=up.channels, keepalive_s=up.keepalive_s,
                                max_streams_per_channel=up.max_streams_per_channel,
                                breaker_failures=up.breaker_failures, breaker_open_s=up.breaker_open_s,
                                clock=self.clock, metrics=self.metrics, ca_file=up.ca_file,
                                tls_server_name=up.tls_server_name)

    def _open_stream(self, leg: LegRef, on_result: Callable[[DeepfakeResult], None]) -> UpstreamLeg:
        assert self.pool is not None and self.creds is not None
        stream = LegStream(self.pool, self.creds, leg, upstream=self.cfg.upstream,
                           queue_chunks=self.cfg.daemon.leg_queue_chunks,
                           replay_chunks=replay_chunks_for(self.cfg.daemon.replay_buffer_s), metrics=self.metrics,
                           clock=self.clock, on_result=on_result, on_state=self._on_stream_state,
                           force_simulated=self.simulated)
        return stream

    def _on_stream_state(self, stream: LegStream, state: str) -> None:
        for change in self.health.observe(state, self.clock.monotonic()):
            event_type = "upstream.recovered" if change.up else "upstream.degraded"
            data = upstream_health_data(up=change.up, target=self.upstream_target, detail=change.detail,
                                        simulated=self.simulated, detector_host=socket.gethostname())
            OutboxAlertSink(self).emit(event_type, data, decided_at=None)
            self.live.upstream_state(target=self.upstream_target, simulated=self.simulated, up=change.up,
                                     detail=change.detail)
            if not change.up:
                log.error("upstream degraded: %s", change.detail)
            else:
                log.warning("upstream recovered")

    # lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        await self._start_upstream()
        outbox_path = Path(cfg.outbox.path)
        state_dir = self.environ.get("STATE_DIRECTORY")
        if state_dir and not outbox_path.is_absolute():
            outbox_path = Path(state_dir.split(":")[0]) / outbox_path
        self.outbox = Outbox(outbox_path, self.clock, synchronous=cfg.outbox.synchronous,
                             busy_timeout_s=cfg.outbox.busy_timeout_s)
        self.sender = WebhookSender(self.outbox, self.endpoints, metrics=self.metrics, clock=self.clock,
                                    schedule=RetrySchedule(cfg.outbox.retry_schedule_s),
                                    max_attempts=cfg.outbox.max_attempts,
                                    retention_s=cfg.outbox.delivered_retention_s)
        self.sender.on_delivery = self.live.delivery
        self.supervisor.spawn("webhook-sender", self.sender.run)
        self.supervisor.spawn("outbox-commit-retry", self.sender.committer.run)
        ctx = CallContext(metrics=self.metrics, clock=self.clock, streams=self._open_stream,
                          alerts=OutboxAlertSink(self), policy=cfg.policy, detector_host=socket.gethostname(),
                          upstream_target=self.upstream_target,
                          final_results_timeout_s=cfg.daemon.final_results_timeout_s, live=self.live)
        self.registry = CallRegistry(ctx, max_calls=cfg.daemon.max_calls, per_ingest_limits=ingest_limits(cfg))
        self.metrics.set_capacity(cfg.daemon.capacity_calls)
        self.ingests, ingest_ports = await start_ingests(IngestContext(
            cfg, self.registry, self.metrics, self.clock, self.environ, reuse_port=self.worker is not None))
        self.ports.update(ingest_ports)
        host, port = parse_hostport(cfg.http.listen)
        self.http = OpsHttpServer(self.metrics, is_ready=lambda: self.ready, health_detail=self._health_detail,
                                  extra_routes=live_routes(self).add_to, down=self.supervisor.down)
        self.ports["http"] = await self.http.start(host, port)
        if self.tune_gc:
            frozen = settle_heap()
            log.debug("gc: %d startup objects frozen out of collections", frozen)
        self.gc_watch.install()  # after the one deliberate full collection above: pauses while serving
        self.ready = True
        self.metrics.ready.set(1)
        self._log_banner()
        if self.worker is not None:  # the supervisor forwards to these private loopback listeners
            self.notifier.notify(X_SPOOFWATCH_PORTS=json.dumps(self.ports))
        self.notifier.ready(status=self._status_line())
        if self.notifier.watchdog_interval_s() is not None:
            self.supervisor.spawn("watchdog", lambda: self.notifier.run_watchdog(
                lambda: self.supervisor.problem() is None, lambda: self.supervisor.problem() or ""))
        self.supervisor.spawn("status", self._report_status, core=False)
        self.started.set()

    async def _report_status(self) -> None:
        """systemd STATUS= every 10 s (calls, upstream; why, while a core task is down)."""
        while True:
            await asyncio.sleep(10.0)
            self.notifier.status(self._status_line())

    def _status_line(self) -> str:
        active = len(self.registry.calls) if self.registry else 0
        sim = " (SIMULATED upstream)" if self.simulated else ""
        problem = self.supervisor.problem()
        return f"{active} calls; upstream {self.upstream_target}{sim}" + (f"; {problem}" if problem else "")

    def _log_banner(self) -> None:
        cfg = self.cfg
        log.info("spoofwatch %s ready; config %s", __version__, cfg.source,
                 extra={"ports": dict(self.ports), "simulated": self.simulated})
        for line in banner_lines(cfg, self.ports):
            log.info("%s", line)
        host = parse_hostport(cfg.http.listen)[0]
        log.info("metrics http://%s:%d/metrics, health /healthz, readiness /readyz", host, self.ports["http"])
        log.info("live operator page: http://%s:%d/", host, self.ports["http"])
        log.info("upstream %s%s; webhooks: %s", self.upstream_target, " (SIMULATED)" if self.simulated else "",
                 ", ".join(redact_url(e.url) for e in self.endpoints) or "none configured (events stay in the outbox)")
        if self.simulated:
            log.warning(SIMULATOR_BANNER)

    def _health_detail(self) -> dict[str, Any]:
        # the sender's snapshot (≤ 1 s old): a health probe must not queue behind outbox commits
        counts = dict(self.sender.counts) if self.sender is not None else {}
        if self.sender is not None:
            counts["held"] = self.sender.committer.held  # not committed yet: the disk refuses
        return {
            "version": __version__,
            "ready": self.ready,
            "calls_active": len(self.registry.calls) if self.registry else 0,
            "upstream": {"target": self.upstream_target, "simulated": self.simulated, "up": self.health.up},
            "outbox": counts,
            "endpoints": list(self.sender.endpoint_states) if self.sender is not None else [],
            "tasks": self.supervisor.snapshot(),
        }

    def request_stop(self) -> None:
        self._stop.set()

    async def reload(self) -> bool:
        """SIGHUP: apply a new config's policy, webhooks and limits; keep the old one if it is bad."""
        if self.config_path is None:
            log.warning("SIGHUP ignored: the daemon runs on built-in defaults (no --config)")
            return False
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
            if self.worker is not None:
                new = self.worker.apply(new)
        except (ConfigError, ValueError) as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.metrics.config_reloads.labels("error").inc()
            self.notifier.ready(status=self._status_line())
            return False
        assert self.registry is not None and self.sender is not None
        self.registry.ctx.policy = new.policy
        for session in list(self.registry.calls.values()):
            for leg in session.legs.values():
                leg.policy.update_config(new.policy)
        self.registry.update_limits(max_calls=new.daemon.max_calls, per_ingest_limits=ingest_limits(new))
        self.metrics.set_capacity(new.daemon.capacity_calls)
        self.endpoints = endpoints_from(new)
        await self.sender.update_endpoints(self.endpoints)  # awaits the outbox thread, never blocks the loop
        restart_needed = [name for name in ("http", "upstream", "simulator", "ingest", "outbox")
                          if getattr(new, name) != getattr(self.cfg, name)]
        if restart_needed:
            log.warning("reloaded; changes to [%s] apply after a restart", ", ".join(restart_needed))
        self.cfg = new
        self.metrics.config_reloads.labels("ok").inc()
        log.info("config reloaded from %s (policy, webhooks, limits)", self.config_path)
        self.notifier.ready(status=self._status_line())
        return True

    async def shutdown(self) -> None:
        cfg = self.cfg
        self.ready = False
        self.metrics.ready.set(0)
        self.notifier.stopping()
        log.info("stopping: no new calls; draining open calls for up to %.0f s", cfg.daemon.drain_timeout_s)
        for ingest in self.ingests:
            with contextlib.suppress(Exception):
                ingest.stop_accepting()
        if self.registry is not None:
            self.registry.stop_accepting()
            forced = await self.registry.drain(cfg.daemon.drain_timeout_s)
            if forced:
                log.warning("%d calls were cut at the drain timeout", forced)
        for ingest in reversed(self.ingests):
            try:
                await ingest.close()
            except Exception:
                log.exception("ingest close failed")
        if self.sender is not None:
            delivered = await self.sender.flush(5.0)
            if not delivered:
                log.warning("outbox not empty at exit: pending events are delivered after the next start")
        await self.supervisor.aclose()
        for task in self._service_tasks:
            task.cancel()
        for task in self._service_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.pool is not None:
            await self.pool.close()
        if self.simulator is not None:
            await self.simulator.stop(grace=1.0)
        if self.sender is not None:  # last: late events (e.g. of the pool closing) still commit on its thread
            await self.sender.aclose()
        if self.http is not None:
            await self.http.close()
        if self.outbox is not None:
            await asyncio.to_thread(self.outbox.close)  # closing checkpoints the WAL: disk work, off the loop
        self.gc_watch.uninstall()
        log.info("stopped")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        reloads: list[asyncio.Task[bool]] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: reloads.append(loop.create_task(self.reload())))
        try:
            await self.start()
            status_every = 10.0
            while not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(status_every):
                        await self._stop.wait()
                reloads[:] = [t for t in reloads if not t.done()]
        finally:
            # SIGTERM/SIGINT stay handled through the drain: a second one (Kubernetes' preStop, then the
            # kubelet's own SIGTERM) must not kill the calls that are finishing
            loop.remove_signal_handler(signal.SIGHUP)
            for t in reloads:
                with contextlib.suppress(Exception):
                    await t
            try:
                await self.shutdown()
            finally:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        return 0
