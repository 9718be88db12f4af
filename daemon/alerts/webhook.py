"""Delivers outbox events to webhook endpoints with Standard Webhooks headers.

Success is 2xx only; a 3xx is a failure (redirects are not followed); 410 Gone disables the
endpoint; 429, 5xx, timeouts and connection errors are retried on the schedule, honouring
Retry-After; after `max_attempts` a delivery is dead-lettered (visible in metrics, replayable).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence

import aiohttp

from daemon import __version__
from daemon.alerts.outbox import Delivery, Endpoint, Outbox
from daemon.alerts.schedule import RetrySchedule, parse_retry_after
from daemon.alerts.signing import SecretError, parse_secrets, sign
from daemon.clock import Clock
from daemon.config import read_secret
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.webhook")
USER_AGENT = f"spoofwatch/{__version__}"


class WebhookSender:
    def __init__(self, outbox: Outbox, endpoints: Sequence[Endpoint], *, metrics: Metrics, clock: Clock,
                 schedule: RetrySchedule | None = None, secrets: Callable[[str], str | None] = read_secret,
                 max_in_flight: int = 8, max_attempts: int = 12, retention_s: float = 7 * 86400.0) -> None:
        self.outbox = outbox
        self.metrics = metrics
        self.clock = clock
        self.schedule = schedule or RetrySchedule()
        self._secrets = secrets
        self.max_attempts = max_attempts
        self.retention_s = retention_s
        self._next_purge = 0.0
        self._sem = asyncio.Semaphore(max_in_flight)
        self._wake = asyncio.Event()
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._endpoints: dict[str, Endpoint] = {}
        self._keys: dict[str, list[bytes]] = {}
        self.update_endpoints(endpoints)

    # configuration -----------------------------------------------------------------------------
    def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Startup and SIGHUP. An endpoint whose secret is missing or malformed is skipped, loudly:
        its events stay pending until the secret is fixed."""
        usable: dict[str, Endpoint] = {}
        keys: dict[str, list[bytes]] = {}
        for ep in endpoints:
            value = self._secrets(ep.secret_env)
            if not value:
                log.error("webhook %s: environment variable %s (its whsec_ secret) is not set; events are kept "
                          "in the outbox until it is", ep.url, ep.secret_env)
                continue
            try:
                keys[ep.key] = parse_secrets(value)
            except SecretError as exc:
                log.error("webhook %s: %s (%s)", ep.url, exc, ep.secret_env)
                continue
            usable[ep.key] = ep
        self.outbox.register_endpoints(list(endpoints))
        self._endpoints, self._keys = usable, keys
        for ep in endpoints:
            self.metrics.endpoint_disabled.labels(ep.key).set(0)
        for key in self.outbox.disabled_endpoints():
            self.metrics.endpoint_disabled.labels(key).set(1)
        self.refresh_gauges()
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def refresh_gauges(self) -> None:
        counts = self.outbox.counts()
        self.metrics.outbox_pending.set(counts["pending"])
        self.metrics.outbox_dead.set(counts["dead"])

    def _active_keys(self) -> list[str]:
        disabled = self.outbox.disabled_endpoints()
        return [k for k in self._endpoints if k not in disabled]

    # running -----------------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        return self._session

    async def run(self) -> None:
        try:
            while True:
                self._wake.clear()
                self._dispatch_due()
                self._purge_old()
                next_at = self.outbox.next_due_at(self._active_keys())
                wait = 30.0 if next_at is None else min(30.0, max(0.05, next_at - self.clock.wall()))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            await self._cancel_in_flight()

    def _dispatch_due(self) -> None:
        for d in self.outbox.due(self.clock.wall(), 200, self._active_keys()):
            key = (d.event_id, d.endpoint)
            if key in self._in_flight:
                continue
            task = asyncio.get_running_loop().create_task(self._deliver(d), name=f"webhook:{d.event_id}")
            self._in_flight[key] = task
            task.add_done_callback(functools.partial(self._done, key))

    def _purge_old(self) -> None:
        """Delivered events are kept `retention_s` (for `outbox list` and replays), then purged hourly."""
        now = self.clock.wall()
        if now >= self._next_purge:
            self._next_purge = now + 3600
            n = self.outbox.purge_delivered_before(now - self.retention_s)
            if n:
                log.info("purged %d delivered events older than %.0f s", n, self.retention_s)

    def _done(self, key: tuple[str, str], _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(key, None)
        self._wake.set()

    async def _deliver(self, d: Delivery) -> None:
        ep = self._endpoints.get(d.endpoint)
        if ep is None:
            return
        async with self._sem:
            ts = int(self.clock.wall())
            headers = {"Content-Type": "application/json", "webhook-id": d.event_id, "webhook-timestamp": str(ts),
                       "webhook-signature": sign(self._keys[ep.key], d.event_id, ts, d.body)}
            status: int | None = None
            retry_after: float | None = None
            try:
                async with self._client().post(ep.url, data=d.body, headers=headers, allow_redirects=False,
                                               timeout=aiohttp.ClientTimeout(total=ep.timeout_s)) as resp:
                    status = resp.status
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), self.clock.wall())
                    await resp.read()
                outcome = "delivered" if 200 <= status < 300 else ("redirect" if 300 <= status < 400 else
                                                                   ("gone" if status == 410 else "http_error"))
                error = "" if outcome == "delivered" else f"HTTP {status}"
            except TimeoutError:
                outcome, error = "timeout", f"no answer within {ep.timeout_s} s"
            except aiohttp.ClientError as exc:
                outcome, error = "connect_error", f"{type(exc).__name__}: {exc}"
        self.metrics.webhook_attempts.labels(outcome).inc()
        self._record(d, ep, outcome, status, error, retry_after)

    def _record(self, d: Delivery, ep: Endpoint, outcome: str, status: int | None, error: str,
                retry_after: float | None) -> None:
        if outcome == "delivered":
            assert status is not None
            self.outbox.mark_delivered(d, status)
            if d.decided_at is not None and d.event_type == "call.spoof_detected":
                self.metrics.alert_latency.observe(max(0.0, self.clock.wall() - d.decided_at))
        elif outcome == "gone":
            n = self.outbox.disable_endpoint(ep.key, "410 Gone")
            self.metrics.endpoint_disabled.labels(ep.key).set(1)
            log.error("webhook %s answered 410 Gone: endpoint disabled, %d deliveries held (replay with "
                      "`spoofwatch outbox replay`)", ep.url, n)
        elif d.attempts + 1 >= self.max_attempts:
            self.outbox.mark_dead(d, status, error)
            log.error("webhook %s: event %s dead-lettered after %d attempts (%s)", ep.url, d.event_id,
                      d.attempts + 1, error)
        else:
            delay = self.schedule.next_delay(d.attempts + 1, retry_after)
            self.outbox.mark_retry(d, self.clock.wall() + delay, status, error)
            log.warning("webhook %s: %s; retry %d in %.0f s", ep.url, error, d.attempts + 1, delay,
                        extra={"event_id": d.event_id})
        self.refresh_gauges()

    async def flush(self, timeout: float) -> bool:
        """Shutdown: deliver what is due now and wait for attempts in flight. True if nothing is pending."""
        try:
            async with asyncio.timeout(timeout):
                self._dispatch_due()
                while self._in_flight:
                    await asyncio.gather(*list(self._in_flight.values()), return_exceptions=True)
        except TimeoutError:
            pass
        return self.outbox.counts()["pending"] == 0

    async def _cancel_in_flight(self) -> None:
        tasks = list(self._in_flight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self._cancel_in_flight()
        if self._session is not None:
            await self._session.close()
            self._session = None
