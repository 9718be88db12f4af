"""Delivery outcomes the outbox did not take yet (its file locked by another process, a full disk).

An attempt was made; recording its outcome failed. Sending it again would turn each failed write
into another POST (every 50 ms once the row is due again), so the outcome is kept here, the
delivery is not dispatched meanwhile, and every kept outcome is written again at once after a
growing, jittered, capped delay. A crash loses only the record: the row is still pending, and
the next start delivers it again (at-least-once; receivers dedupe on webhook-id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from daemon.clock import Clock
from daemon.ops.metrics import Metrics
from daemon.ops.supervise import Backoff

log = logging.getLogger("spoofwatch.webhook")
Key = tuple[str, str]  # (event id, endpoint key)


class UnrecordedOutcomes:
    def __init__(self, *, clock: Clock, metrics: Metrics, backoff: Backoff | None = None) -> None:
        self.clock = clock
        self.metrics = metrics
        self.backoff = backoff or Backoff(0.5, 10.0)
        self._writes: dict[Key, Callable[[], Awaitable[None]]] = {}
        self._again_at: float | None = None

    def __contains__(self, key: Key) -> bool:
        return key in self._writes

    def __len__(self) -> int:
        return len(self._writes)

    def keep(self, key: Key, write: Callable[[], Awaitable[None]]) -> None:
        """`write()` failed: keep it for a later attempt."""
        self._writes[key] = write
        self.metrics.outbox_write_errors.labels("mark").inc()
        if self._again_at is None:
            self._again_at = self.clock.monotonic() + self.backoff.next_delay()

    def due_in(self) -> float | None:
        """Seconds until the next attempt; None with nothing kept."""
        if not self._writes or self._again_at is None:
            return None
        return self._again_at - self.clock.monotonic()

    async def write_again(self, *, now: bool = False) -> None:
        """Once the delay is over (or `now`: shutdown), write every kept outcome again."""
        if not self._writes or (not now and (self._again_at or 0.0) > self.clock.monotonic()):
            return
        pending = list(self._writes.items())
        results = await asyncio.gather(*(write() for _, write in pending), return_exceptions=True)
        for (key, _), result in zip(pending, results, strict=True):
            if not isinstance(result, BaseException):
                self._writes.pop(key, None)
        if self._writes:
            self.metrics.outbox_write_errors.labels("mark").inc()
            self._again_at = self.clock.monotonic() + self.backoff.next_delay()
        else:
            log.warning("outbox writes again: %d delivery outcomes recorded", len(pending))
            self.backoff.reset()
            self._again_at = None
