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
from daemon.model import DeepfakeResult, LegRef
from daemon.ops.gc import GcPauseWatch, settle_heap
from daemon.ops.http import OpsHttpServer
from daemon.ops.metrics import Metrics
from daemon.ops.systemd import SdNotifier
from daemon.policy.payloads import upstream_health_data
from daemon.upstream.channels import ChannelPool
from daemon.upstream.health import UpstreamHealth
from daemon.upstream.stream import LegStream

log = logging.getLogger("spoofwatch")

SIMULATOR_BANNER = (
    "UPSTREAM IS THE BUILT-IN SIMULATOR: a test double whose labels come from a 3000 Hz marker-tone rule, "
    "NOT a deepfake detector. Every result is marked simulated. Set [upstream] target to use the real API."
)


class OutboxAlertSink:
    """Commits each event to the outbox before anything is sent, then wakes the sender."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def emit(self, event_type: str, data: dict[str, Any], *, decided_at: float | None) -> None:
        d = self._daemon
        assert d.outbox is not None
        occurred_at = d.clock.wall()

        def committed(event_id: str | None, exc: BaseException | None) -> None:
            if exc is not None:
                # The disk is the one thing we cannot route around: say it loudly, keep the call alive.
                log.error("could not commit %s to the outbox", event_type, exc_info=exc)
                d.metrics.drops.labels("outbox", "commit_failed").inc()
            else:
                d.metrics.alerts.labels(event_type).inc()

        if d.sender is not None:
            try:
                d.sender.emit(event_type, data, endpoints=d.endpoints, occurred_at=occurred_at,
                              decided_at=decided_at, on_committed=committed)
                return
            except RuntimeError:
                pass  # the sender's thread is gone (last moments of shutdown): commit here instead
        try:
            event_id = d.outbox.add(event_type, data, endpoints=d.endpoints, occurred_at=occurred_at,
                                    decided_at=decided_at)
        except Exception as exc:
            committed(None, exc)
        else:
            committed(event_id, None)


def endpoints_from(cfg: Config) -> list[Endpoint]:
    return [Endpoint.from_config(hook) for hook in cfg.webhook]


class Daemon:
    def __init__(self, cfg: Config, *, config_path: str | None = None, clock: Clock | None = None,
                 metrics: Metrics | None = None, environ: Mapping[str, str] | None = None,
                 tune_gc: bool = False) -> None:
        self.cfg = cfg
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
        self.started = asyncio.Event()

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
        self.pool = ChannelPool(self.upstream_target, tls=up.tls, size=up.channels, keepalive_s=up.keepalive_s,
                                max_streams_per_channel=up.max_streams_per_channel,
                                breaker_failures=up.breaker_failures, breaker_open_s=up.breaker_open_s,
                                clock=self.clock, metrics=self.metrics)

    def _open_stream(self, leg: LegRef, on_result: Callable[[DeepfakeResult], None]) -> UpstreamLeg:
        assert self.pool is not None and self.creds is not None
        stream = LegStream(self.pool, self.creds, leg, upstream=self.cfg.upstream,
                           queue_chunks=self.cfg.daemon.leg_queue_chunks,
                           replay_chunks=self.cfg.daemon.replay_buffer_chunks, metrics=self.metrics,
                           clock=self.clock, on_result=on_result, on_state=self._on_stream_state,
                           force_simulated=self.simulated)
        return stream

    def _on_stream_state(self, stream: LegStream, state: str) -> None:
        for change in self.health.observe(state, self.clock.monotonic()):
            event_type = "upstream.recovered" if change.up else "upstream.degraded"
            data = upstream_health_data(up=change.up, target=self.upstream_target, detail=change.detail,
                                        simulated=self.simulated, detector_host=socket.gethostname())
            OutboxAlertSink(self).emit(event_type, data, decided_at=None)
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
        self.outbox = Outbox(outbox_path, self.clock, synchronous=cfg.outbox.synchronous)
        self.sender = WebhookSender(self.outbox, self.endpoints, metrics=self.metrics, clock=self.clock,
                                    schedule=RetrySchedule(cfg.outbox.retry_schedule_s),
                                    max_attempts=cfg.outbox.max_attempts,
                                    retention_s=cfg.outbox.delivered_retention_s)
        self._service_tasks.append(asyncio.create_task(self.sender.run(), name="webhook-sender"))
        ctx = CallContext(metrics=self.metrics, clock=self.clock, streams=self._open_stream,
                          alerts=OutboxAlertSink(self), policy=cfg.policy, detector_host=socket.gethostname(),
                          upstream_target=self.upstream_target,
                          final_results_timeout_s=cfg.daemon.final_results_timeout_s)
        self.registry = CallRegistry(ctx, max_calls=cfg.daemon.max_calls, per_ingest_limits=self._ingest_limits(cfg))
        await self._start_ingests()
        host, port = parse_hostport(cfg.http.listen)
        self.http = OpsHttpServer(self.metrics, is_ready=lambda: self.ready, health_detail=self._health_detail)
        self.ports["http"] = await self.http.start(host, port)
        if self.tune_gc:
            frozen = settle_heap()
            log.debug("gc: %d startup objects frozen out of collections", frozen)
        self.gc_watch.install()  # after the one deliberate full collection above: pauses while serving
        self.ready = True
        self.metrics.ready.set(1)
        self._log_banner()
        self.notifier.ready(status=self._status_line())
        if self.notifier.watchdog_interval_s() is not None:
            self._service_tasks.append(asyncio.create_task(self.notifier.run_watchdog(lambda: True),
                                                           name="watchdog"))
        self.started.set()

    @staticmethod
    def _ingest_limits(cfg: Config) -> dict[str, int]:
        return {"twilio": cfg.ingest.twilio.max_calls, "rtp": cfg.ingest.rtp.max_calls}

    async def _start_ingests(self) -> None:
        cfg = self.cfg
        assert self.registry is not None
        if cfg.ingest.twilio.enabled:
            from daemon.ingest.twilio.server import TwilioIngest

            twilio = TwilioIngest(cfg.ingest.twilio, self.registry, self.metrics, self.clock)
            self.ports["twilio"] = await twilio.start()
            self.ingests.append(twilio)
        if cfg.ingest.rtp.enabled:
            from daemon.ingest.rtp.control import RtpControlServer
            from daemon.ingest.rtp.server import RtpIngest

            rtp = RtpIngest(cfg.ingest.rtp, self.registry, self.metrics, self.clock)
            await rtp.start()
            self.ingests.append(rtp)
            control = RtpControlServer(cfg.ingest.rtp, rtp, self.metrics)
            self.ports["rtp_control"] = await control.start()
            self.ingests.append(control)

    def _status_line(self) -> str:
        active = len(self.registry.calls) if self.registry else 0
        sim = " (SIMULATED upstream)" if self.simulated else ""
        return f"{active} calls; upstream {self.upstream_target}{sim}"

    def _log_banner(self) -> None:
        cfg = self.cfg
        log.info("spoofwatch %s ready; config %s", __version__, cfg.source,
                 extra={"ports": dict(self.ports), "simulated": self.simulated})
        if "twilio" in self.ports:
            host = parse_hostport(cfg.ingest.twilio.listen)[0]
            url = f"ws://{host}:{self.ports['twilio']}{cfg.ingest.twilio.path}"
            log.info("Twilio Media Streams: %s", url)
            log.info("try it: spoofwatch loadgen twilio --url %s --calls 1 --clip marked --track both "
                     "--other-clip clean", url)
        if cfg.ingest.rtp.enabled:
            r = cfg.ingest.rtp
            log.info("RTP: %s ports %d-%d; control API http://%s:%s/v1/rtp/sessions", r.listen_host, r.port_min,
                     r.port_max, parse_hostport(r.control_listen)[0], self.ports.get("rtp_control"))
        host = parse_hostport(cfg.http.listen)[0]
        log.info("metrics http://%s:%d/metrics, health /healthz, readiness /readyz", host, self.ports["http"])
        log.info("upstream %s%s; webhooks: %s", self.upstream_target, " (SIMULATED)" if self.simulated else "",
                 ", ".join(e.url for e in self.endpoints) or "none configured (events stay in the outbox)")
        if self.simulated:
            log.warning(SIMULATOR_BANNER)

    def _health_detail(self) -> dict[str, Any]:
        # the sender's snapshot (≤ 1 s old): a health probe must not queue behind outbox commits
        counts = dict(self.sender.counts) if self.sender is not None else {}
        return {
            "version": __version__,
            "ready": self.ready,
            "calls_active": len(self.registry.calls) if self.registry else 0,
            "upstream": {"target": self.upstream_target, "simulated": self.simulated, "up": self.health.up},
            "outbox": counts,
            "endpoints": list(self.sender.endpoint_states) if self.sender is not None else [],
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
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.metrics.config_reloads.labels("error").inc()
            self.notifier.ready(status=self._status_line())
            return False
        assert self.registry is not None and self.sender is not None
        self.registry.ctx.policy = new.policy
        for session in list(self.registry.calls.values()):
            for leg in session.legs.values():
                leg.policy.update_config(new.policy)
        self.registry.update_limits(max_calls=new.daemon.max_calls, per_ingest_limits=self._ingest_limits(new))
        self.endpoints = endpoints_from(new)
        self.sender.update_endpoints(self.endpoints)
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
            await self.sender.aclose()
        for task in self._service_tasks:
            task.cancel()
        for task in self._service_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.pool is not None:
            await self.pool.close()
        if self.simulator is not None:
            await self.simulator.stop(grace=1.0)
        if self.http is not None:
            await self.http.close()
        if self.outbox is not None:
            self.outbox.close()
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
                self.notifier.status(self._status_line())
                reloads[:] = [t for t in reloads if not t.done()]
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for t in reloads:
                with contextlib.suppress(Exception):
                    await t
            await self.shutdown()
        return 0
