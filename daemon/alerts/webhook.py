"""Delivers outbox events to webhook endpoints with Standard Webhooks headers.

Success is 2xx only; a 3xx is a failure (redirects are not followed); 410 Gone disables the
endpoint; 429, 5xx, timeouts and connection errors are retried on the schedule, honouring
Retry-After; after `max_attempts` a delivery is dead-lettered (visible in metrics, replayable).

Outbox faults do not turn into resends: when an attempt's outcome cannot be recorded (the file is
locked by another process, the disk is full), the outcome is kept in memory and recorded again with
backoff, and the delivery is not sent again meanwhile. Events whose commit fails are held and
retried by the `EventCommitter` (daemon.alerts.commit). URLs are shown redacted (redact_url).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp

from daemon import __version__
from daemon.alerts.commit import EventCommitter, OnCommitted
from daemon.alerts.outbox import STATES, Delivery, Endpoint, Outbox
from daemon.alerts.redact import redact_text, redact_url
from daemon.alerts.schedule import RetrySchedule, parse_retry_after
from daemon.alerts.signing import SecretError, parse_secrets, sign
from daemon.alerts.unrecorded import UnrecordedOutcomes
from daemon.alerts.worker import OutboxWorker
from daemon.clock import Clock
from daemon.config import read_secret
from daemon.ops.metrics import Metrics, exemplar
from daemon.ops.supervise import Backoff

log = logging.getLogger("spoofwatch.webhook")
USER_AGENT = f"spoofwatch/{__version__}"
#: after a change, the outbox gauges and /healthz snapshot are refreshed at most this often (a COUNT
#: over the deliveries table per delivery would grow with the retained history)
REFRESH_S = 1.0
#: and at least this often when nothing happens (e.g. an `outbox replay` from the CLI)
IDLE_REFRESH_S = 10.0
#: due deliveries read (and dispatched) per query
DUE_PAGE = 200
#: a failed purge (hourly) is tried again after this long
PURGE_RETRY_S = 60.0
_T = TypeVar("_T")


class WebhookSender:
    def __init__(self, outbox: Outbox, endpoints: Sequence[Endpoint], *, metrics: Metrics, clock: Clock,
                 schedule: RetrySchedule | None = None, secrets: Callable[[str], str | None] = read_secret,
                 max_in_flight: int = 8, max_attempts: int = 12, retention_s: float = 7 * 86400.0,
                 write_backoff: Backoff | None = None, held_capacity: int = 10_000) -> None:
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
        # Every outbox call runs here, one at a time, off the event loop (see daemon.alerts.outbox).
        self._io = OutboxWorker(outbox)
        self._disabled: frozenset[str] = frozenset()
        #: outbox snapshot for /healthz and the gauges: refreshed at most every REFRESH_S after a change
        self.counts: dict[str, int] = dict.fromkeys(STATES, 0)
        self.endpoint_states: list[dict[str, Any]] = []
        self._stale = True
        self._refreshed_at = -1e9
        self._refresh_timer: asyncio.TimerHandle | None = None
        self._page_full = False
        #: observer of each attempt's outcome (the live page): (event id, endpoint key, state, attempts, error)
        #: with state delivered | failing (retry scheduled) | dead | disabled; called on the loop, must not raise
        self.on_delivery: Callable[[str, str, str, int, str], None] | None = None
        #: attempts made whose outcome the outbox did not take yet: recorded again with backoff, never resent
        self._unrecorded = UnrecordedOutcomes(clock=clock, metrics=metrics, backoff=write_backoff)
        #: endpoints to (re)register in the outbox (startup, SIGHUP; again after a failed write)
        self._register: list[Endpoint] | None = None
        self.committer = EventCommitter(self._io, outbox, metrics=metrics, capacity=held_capacity,
                                        on_durable=self._after_commit)
        self._set_endpoints(endpoints)

    # configuration -----------------------------------------------------------------------------
    def _set_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """An endpoint whose secret is missing or malformed is skipped, loudly: its events stay pending
        until the secret is fixed. The outbox learns the endpoints on the outbox thread (`run`)."""
        usable: dict[str, Endpoint] = {}
        keys: dict[str, list[bytes]] = {}
        for ep in endpoints:
            value = self._secrets(ep.secret_env)
            if not value:
                log.error("webhook %s: environment variable %s (its whsec_ secret) is not set; events are kept "
                          "in the outbox until it is", redact_url(ep.url), ep.secret_env)
                continue
            try:
                keys[ep.key] = parse_secrets(value)
            except SecretError as exc:
                log.error("webhook %s: %s (%s)", redact_url(ep.url), exc, ep.secret_env)
                continue
            usable[ep.key] = ep
        self._endpoints, self._keys = usable, keys
        for ep in endpoints:
            self.metrics.endpoint_disabled.labels(ep.key).set(0)
        self._register = list(endpoints)
        self._stale = True
        self._refreshed_at = -1e9  # the disabled set is read again before the next dispatch
        self.wake()

    async def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """SIGHUP: new endpoints and secrets. Waits for the outbox thread without blocking the loop; if
        the outbox cannot take the endpoints now, the run loop registers them later."""
        self._set_endpoints(endpoints)
        with contextlib.suppress(Exception):  # logged and retried by `_register_endpoints`
            await self._register_endpoints()
        with contextlib.suppress(Exception):  # reads: the run loop refreshes again
            await self.refresh()

    async def _register_endpoints(self) -> None:
        todo = self._register
        if todo is None:
            return
        try:
            await self._db(self.outbox.register_endpoints, todo)
        except Exception as exc:
            self.metrics.outbox_write_errors.labels("register").inc()
            log.warning("could not register webhook endpoints in the outbox (%s): trying again", exc)
            raise
        if self._register is todo:
            self._register = None

    def wake(self) -> None:
        self._wake.set()

    async def _db(self, fn: Callable[..., _T], *args: Any) -> _T:
        """A write on the outbox thread (in a group commit), awaited without blocking the loop."""
        return await asyncio.wrap_future(self._io.submit(fn, *args))

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        """A read on the outbox thread: no write lock, so it goes on while another process writes."""
        return await asyncio.wrap_future(self._io.submit_read(fn, *args))

    def emit(self, event_type: str, data: Mapping[str, Any], *, endpoints: Sequence[Endpoint], occurred_at: float,
             decided_at: float | None, on_committed: OnCommitted) -> str:
        """Commit an event on the outbox thread (held and retried while the outbox refuses it); once it is
        durable, on the loop, `on_committed(event id, None)` and a wake-up of the sender. Nothing is sent
        before the commit: the sender reads committed rows only. Returns the event id (its webhook-id)."""
        return self.committer.emit(event_type, data, endpoints=endpoints, occurred_at=occurred_at,
                                   decided_at=decided_at, on_committed=on_committed)

    def _after_commit(self) -> None:
        self._mark_stale()
        self.wake()

    def _read_snapshot(self) -> tuple[dict[str, int], list[dict[str, Any]], frozenset[str]]:
        """Outbox thread: counts, endpoint states and the disabled set (an `outbox replay` from the CLI
        re-enables an endpoint in the database; this is where the daemon notices)."""
        return (self.outbox.counts(), self.outbox.endpoint_states(), frozenset(self.outbox.disabled_endpoints()))

    def _apply_snapshot(self, snapshot: tuple[dict[str, int], list[dict[str, Any]], frozenset[str]]) -> None:
        """Loop side: the sender's state changes on one thread only."""
        self.counts, self.endpoint_states, self._disabled = snapshot
        self.metrics.outbox_pending.set(self.counts["pending"])
        self.metrics.outbox_dead.set(self.counts["dead"])
        for key in self._disabled:
            self.metrics.endpoint_disabled.labels(key).set(1)

    async def refresh(self) -> None:
        self._apply_snapshot(await self._read(self._read_snapshot))
        self._stale = False
        self._refreshed_at = self.clock.monotonic()

    def _active_keys(self) -> list[str]:
        return [k for k in self._endpoints if k not in self._disabled]

    # running -----------------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        return self._session

    async def run(self) -> None:
        """The delivery loop (supervised: an exception ends it and the supervisor starts it again)."""
        try:
            while True:
                self._wake.clear()
                if self._register is not None:
                    with contextlib.suppress(Exception):  # logged; tried again on the next round
                        await self._register_endpoints()
                since = self.clock.monotonic() - self._refreshed_at
                if (self._stale and since >= REFRESH_S) or since >= IDLE_REFRESH_S:
                    await self.refresh()
                await self._unrecorded.write_again()
                await self._dispatch_due()
                await self._purge_old()
                next_at = await self._read(self.outbox.next_due_at, self._active_keys())
                wait = IDLE_REFRESH_S if next_at is None else next_at - self.clock.wall()
                again_in = self._unrecorded.due_in()
                if again_in is not None:
                    wait = min(wait, again_in)
                if self._register is not None:
                    wait = min(wait, self._unrecorded.backoff.initial_s)
                # a stale snapshot has its own wake-up (`_mark_stale`'s timer)
                wait = min(IDLE_REFRESH_S, max(0.05, wait))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            await self._cancel_in_flight()

    async def _dispatch_due(self) -> None:
        loop = asyncio.get_running_loop()
        due = await self._read(self.outbox.due, self.clock.wall(), DUE_PAGE, self._active_keys())
        self._page_full = len(due) >= DUE_PAGE
        for d in due:
            key = (d.event_id, d.endpoint)
            if key in self._in_flight or key in self._unrecorded:  # sent already: its outcome is on its way
                continue
            task = loop.create_task(self._deliver(d), name=f"webhook:{d.event_id}")
            self._in_flight[key] = task
            task.add_done_callback(functools.partial(self._done, key))

    async def _purge_old(self) -> None:
        """Delivered events are kept `retention_s` (for `outbox list` and replays), then purged hourly."""
        now = self.clock.wall()
        if now >= self._next_purge:
            self._next_purge = now + 3600
            try:
                n = await self._db(self.outbox.purge_delivered_before, now - self.retention_s)
            except Exception as exc:
                self._next_purge = now + PURGE_RETRY_S
                self.metrics.outbox_write_errors.labels("purge").inc()
                log.warning("could not purge delivered events (%s): trying again in %.0f s", exc, PURGE_RETRY_S)
                return
            if n:
                log.info("purged %d delivered events older than %.0f s", n, self.retention_s)

    def _done(self, key: tuple[str, str], _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(key, None)
        # Every due row is already in flight unless the last page was full: only then look again (a
        # query per completed delivery would re-read all rows in flight, on every alert of a burst).
        if self._page_full:
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
            except aiohttp.ClientError as exc:  # its message may quote the URL: never its token
                outcome, error = "connect_error", redact_text(f"{type(exc).__name__}: {exc}", ep.url)
        self.metrics.webhook_attempts.labels(outcome).inc()
        await self._record(d, ep, outcome, status, error, retry_after)

    async def _record(self, d: Delivery, ep: Endpoint, outcome: str, status: int | None, error: str,
                      retry_after: float | None) -> None:
        """Record an attempt's outcome. If the outbox refuses the write, the outcome is kept and written
        again with backoff (daemon.alerts.unrecorded); the delivery is not sent again meanwhile."""
        write = functools.partial(self._record_now, d, ep, outcome, status, error, retry_after)
        try:
            await write()
        except Exception as exc:
            self._unrecorded.keep((d.event_id, d.endpoint), write)
            log.warning("webhook %s: could not record the %s outcome of event %s (%s): recording it again later, "
                        "not resending", redact_url(ep.url), outcome, d.event_id, exc)
            self.wake()

    async def _record_now(self, d: Delivery, ep: Endpoint, outcome: str, status: int | None, error: str,
                          retry_after: float | None) -> None:
        if outcome == "delivered":
            assert status is not None
            await self._db(self.outbox.mark_delivered, d, status)
            if d.decided_at is not None and d.event_type == "call.spoof_detected":
                self.metrics.alert_latency.observe(max(0.0, self.clock.wall() - d.decided_at),
                                                   exemplar(webhook_id=d.event_id))
        elif outcome == "gone":
            n = await self._db(self.outbox.disable_endpoint, ep.key, "410 Gone")
            self._disabled = self._disabled | {ep.key}
            self.metrics.endpoint_disabled.labels(ep.key).set(1)
            log.error("webhook %s answered 410 Gone: endpoint disabled, %d deliveries held (replay with "
                      "`spoofwatch outbox replay`)", redact_url(ep.url), n)
        elif d.attempts + 1 >= self.max_attempts:
            await self._db(self.outbox.mark_dead, d, status, error)
            log.error("webhook %s: event %s dead-lettered after %d attempts (%s)", redact_url(ep.url), d.event_id,
                      d.attempts + 1, error)
        else:
            delay = self.schedule.next_delay(d.attempts + 1, retry_after)
            await self._db(self.outbox.mark_retry, d, self.clock.wall() + delay, status, error)
            self.wake()  # the run loop re-plans its sleep around the new due time
            log.warning("webhook %s: %s; retry %d in %.0f s", redact_url(ep.url), error, d.attempts + 1, delay,
                        extra={"event_id": d.event_id})
        if self.on_delivery is not None:
            state = {"delivered": "delivered", "gone": "disabled"}.get(outcome) or (
                "dead" if d.attempts + 1 >= self.max_attempts else "failing")
            self.on_delivery(d.event_id, ep.key, state, d.attempts + 1, error)
        self._mark_stale()

    def _mark_stale(self) -> None:
        """The snapshot (gauges, /healthz) is refreshed by the run loop within REFRESH_S."""
        self._stale = True
        if self._refresh_timer is None:
            def due() -> None:
                self._refresh_timer = None
                self._wake.set()

            self._refresh_timer = asyncio.get_running_loop().call_later(REFRESH_S, due)

    async def flush(self, timeout: float) -> bool:
        """Shutdown: commit what is held, deliver what is due now and wait for attempts in flight. True if
        nothing is pending (or held)."""
        try:
            async with asyncio.timeout(timeout):
                await self.committer.flush()
                if self._register is not None:
                    with contextlib.suppress(Exception):
                        await self._register_endpoints()
                if self.clock.monotonic() - self._refreshed_at >= IDLE_REFRESH_S:
                    await self.refresh()  # the disabled set, if `run` never read it
                await self._dispatch_due()
                while self._in_flight:
                    await asyncio.gather(*list(self._in_flight.values()), return_exceptions=True)
        except TimeoutError:
            pass
        with contextlib.suppress(Exception):
            await self._unrecorded.write_again(now=True)
        try:
            await self.refresh()
        except Exception as exc:
            log.warning("outbox counts unreadable at shutdown: %s", exc)
            return False
        return self.counts["pending"] == 0 and not self.committer.held and not self._unrecorded

    async def _cancel_in_flight(self) -> None:
        tasks = list(self._in_flight.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        """Last: commit what is still held (lost otherwise: reported loudly), then stop the outbox thread
        after the writes already submitted (late events of the drain) finish."""
        if self._refresh_timer is not None:
            self._refresh_timer.cancel()
            self._refresh_timer = None
        await self._cancel_in_flight()
        if self._session is not None:
            await self._session.close()
            self._session = None
        if not self._io.closed:
            with contextlib.suppress(Exception):
                await self._unrecorded.write_again(now=True)
            await self.committer.flush()
        self.committer.abandon()
        await asyncio.to_thread(self._io.shutdown)
