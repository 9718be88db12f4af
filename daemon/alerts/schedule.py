"""The retry schedule (sans-I/O): 5 s, 30 s, 2 min, 5 min, 15 min, 30 min, 1 h, 2 h, 4 h, 8 h, 12 h,
24 h (about 2 days in all) with ±20 % jitter; Retry-After is honoured (never sooner, capped at 24 h)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from email.utils import parsedate_to_datetime

DEFAULT_DELAYS_S = (5, 30, 120, 300, 900, 1800, 3600, 7200, 14400, 28800, 43200, 86400)
RETRY_AFTER_CAP_S = 86400.0


class RetrySchedule:
    def __init__(self, delays_s: Sequence[float] = DEFAULT_DELAYS_S, jitter: float = 0.2,
                 rng: random.Random | None = None) -> None:
        if not delays_s:
            raise ValueError("a schedule needs at least one delay")
        self.delays_s = tuple(float(d) for d in delays_s)
        self.jitter = jitter
        self.rng = rng or random.Random()

    def next_delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Delay after failed attempt number `attempt` (1-based)."""
        base = self.delays_s[min(max(attempt, 1), len(self.delays_s)) - 1]
        delay = base * (1 + self.jitter * (2 * self.rng.random() - 1))
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, RETRY_AFTER_CAP_S))
        return delay


def parse_retry_after(value: str | None, now_wall: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_wall)
