"""Committing events to the outbox, and holding those the disk will not take yet.

An event gets its id (its future `webhook-id`) and its exact body when it is emitted; the commit runs
on the outbox thread. If the commit fails (disk full, the file locked by another process beyond the
busy timeout, an I/O error), the event is *held* in memory, in emit order, and later events queue
behind it; one retry task commits what is held with a growing, jittered, capped delay and the same
ids. Held events are counted (`spoofwatch_outbox_held_events`); only a full bound drops one, with an
ERROR and `spoofwatch_drops_total{ingest="outbox",reason="held_full"}`. Held events live in memory
only: a crash before the disk answers loses them, which is why the gauge deserves an alert.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from daemon.alerts.outbox import Endpoint, Outbox, encode_event, new_event_id
from daemon.alerts.worker import OutboxWorker
from daemon.ops.metrics import Metrics
from daemon.ops.supervise import Backoff

log = logging.getLogger("spoofwatch.outbox")
#: held events retried per commit (one group commit on the outbox thread)
RETRY_BATCH = 256
OnCommitted = Callable[[str | None, BaseException | None], None]


@dataclass(order=True)
class _Event:
    seq: int
    event_id: str = field(compare=False)
    event_type: str = field(compare=False)
    body: bytes = field(compare=False)
    endpoints: tuple[Endpoint, ...] = field(compare=False)
    occurred_at: float = field(compare=False)
    decided_at: float | None = field(compare=False)
    on_committed: OnCommitted = field(compare=False)


class HeldFull(RuntimeError):
    """The memory bound for uncommitted events was reached: this event was dropped."""


class EventCommitter:
    """Loop side of event commits: `emit` from the loop; `run` (a supervised task) retries what is held.
    `on_committed(event_id, None)` runs once an event is durable; `on_committed(None, error)` only if it
    was dropped (memory bound, or still held at shutdown)."""

    def __init__(self, io: OutboxWorker, outbox: Outbox, *, metrics: Metrics, capacity: int = 10_000,
                 backoff: Backoff | None = None, on_durable: Callable[[], None] = lambda: None) -> None:
        self._io = io
        self._outbox = outbox
        self.metrics = metrics
        self.capacity = capacity
        self.backoff = backoff or Backoff(0.5, 10.0)
        self._on_durable = on_durable  # e.g. wake the sender
        self._seq = itertools.count()
        self._held: list[_Event] = []  # sorted by emit order
        self._retrying = False
        self._failed = False  # the last commit failed: wait a backoff delay before the next
        self._wake = asyncio.Event()

    @property
    def held(self) -> int:
        return len(self._held)

    def emit(self, event_type: str, data: Mapping[str, Any], *, endpoints: Sequence[Endpoint], occurred_at: float,
             decided_at: float | None, on_committed: OnCommitted) -> str:
        """Take the event now (id, body: `data` may change once we return); commit it on the outbox thread,
        or hold it behind older held events. Returns the event id."""
        ev = _Event(next(self._seq), new_event_id(occurred_at), event_type, encode_event(event_type, data, occurred_at),
                    tuple(endpoints), occurred_at, decided_at, on_committed)
        if self._io.closed:  # after the last flush (the very end of shutdown): nothing will commit it
            self._held.append(ev)
            self.abandon()
        elif self._held or self._retrying:
            self._hold(ev, None)  # keep the order: behind the events that are waiting
        else:
            self._submit(ev)
        return ev.event_id

    def _future(self, ev: _Event) -> Future[str]:
        return self._io.submit(self._outbox.add_encoded, ev.event_type, ev.body, endpoints=ev.endpoints,
                               occurred_at=ev.occurred_at, decided_at=ev.decided_at, event_id=ev.event_id)

    def _submit(self, ev: _Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            future = self._future(ev)
        except RuntimeError as exc:  # the outbox thread is gone (the last moments of shutdown)
            self._hold(ev, exc)
            return

        def done(f: Future[str]) -> None:
            exc = f.exception()
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._settled, ev, exc)

        future.add_done_callback(done)

    def _settled(self, ev: _Event, exc: BaseException | None) -> None:
        if exc is None:
            self._durable(ev)
        else:
            self._hold(ev, exc)

    def _durable(self, ev: _Event) -> None:
        self._on_durable()
        ev.on_committed(ev.event_id, None)

    def _hold(self, ev: _Event, exc: BaseException | None) -> None:
        if exc is not None:
            self.metrics.outbox_write_errors.labels("commit").inc()
            if not self._failed:  # once per outage, not once per event
                log.warning("could not commit %s %s to the outbox (%s): holding it in memory and retrying",
                            ev.event_type, ev.event_id, exc)
            self._failed = True
        if len(self._held) >= self.capacity:
            self.metrics.drops.labels("outbox", "held_full").inc()
            log.error("event %s (%s) DROPPED: the outbox cannot commit and %d events are already held in memory",
                      ev.event_id, ev.event_type, len(self._held))
            ev.on_committed(None, HeldFull(f"{len(self._held)} events held"))
            return
        bisect.insort(self._held, ev)
        self.metrics.outbox_held.set(len(self._held))
        self._wake.set()

    async def run(self) -> None:
        """Commit what is held, in order, with backoff after each failure (supervised: one per daemon)."""
        while True:
            if not self._held:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._failed:
                await asyncio.sleep(self.backoff.next_delay())
            await self._commit_held()

    async def _commit_held(self) -> bool:
        """One attempt at the oldest held events; True if all of them are durable now."""
        batch = self._held[:RETRY_BATCH]
        self._retrying = True  # meanwhile new events queue behind the batch
        try:
            try:
                futures = [asyncio.wrap_future(self._future(ev)) for ev in batch]
            except RuntimeError as exc:
                results: list[BaseException | str] = [exc] * len(batch)
            else:
                results = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            self._retrying = False
        failed = [r for r in results if isinstance(r, BaseException)]
        done = [ev for ev, r in zip(batch, results, strict=True) if not isinstance(r, BaseException)]
        gone = {id(ev) for ev in done}
        self._held = [ev for ev in self._held if id(ev) not in gone]
        self.metrics.outbox_held.set(len(self._held))
        for ev in done:
            self._durable(ev)
        if failed:
            self.metrics.outbox_write_errors.labels("commit").inc()
            self._failed = True
            log.warning("outbox still refuses commits (%s): %d events held", failed[0], len(self._held))
            return False
        if self._failed:
            log.warning("outbox commits again: %d held events committed, %d still held", len(done), len(self._held))
        self._failed = False
        self.backoff.reset()
        return True

    async def flush(self) -> int:
        """Shutdown: one more attempt at everything held, without waiting for backoff. Returns how many
        are still held (lost at exit: each is reported to its `on_committed` and counted as a drop)."""
        while self._held and await self._commit_held():
            pass
        return len(self._held)

    def abandon(self) -> int:
        """After the last flush: what is still held is lost; say so loudly, once per event."""
        lost, self._held = self._held, []
        self.metrics.outbox_held.set(0)
        for ev in lost:
            self.metrics.drops.labels("outbox", "not_committed_at_exit").inc()
            log.error("event %s (%s) LOST: the outbox could not commit it before exit", ev.event_id, ev.event_type)
            ev.on_committed(None, RuntimeError("not committed before exit"))
        return len(lost)
