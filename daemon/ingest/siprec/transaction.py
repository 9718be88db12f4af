"""Server transaction timers (RFC 3261 §17.2), sans-I/O: times come in as arguments.

INVITE: the final response (our 200 OK, or an error) is retransmitted over UDP at T1, then at
intervals doubling up to T2 (0.5 s, 1 s, 2 s, 4 s, 4 s…) until the ACK comes; Timer H (64·T1 = 32 s)
gives up. Over TCP nothing is retransmitted, Timer H still bounds the wait for the ACK (§13.3.1.4).
Non-INVITE (BYE, OPTIONS, UPDATE, CANCEL): the response is kept for Timer J (64·T1 over UDP, 0 over
TCP) and sent again when the request is retransmitted (§17.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

T1 = 0.5
T2 = 4.0


class Tick(Enum):
    WAIT = "wait"
    RETRANSMIT = "retransmit"
    TIMEOUT = "timeout"


@dataclass
class FinalResponseTimer:
    """Retransmission of an INVITE's final response until its ACK. `poll(now)` says what to do; call it
    at `deadline()` (or later: missed retransmissions are not sent twice)."""

    started_at: float
    reliable: bool
    t1: float = T1
    t2: float = T2
    interval: float = field(init=False)
    next_at: float | None = field(init=False)
    give_up_at: float = field(init=False)
    retransmissions: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.interval = self.t1
        self.next_at = None if self.reliable else self.started_at + self.t1
        self.give_up_at = self.started_at + 64 * self.t1

    def deadline(self) -> float:
        return self.give_up_at if self.next_at is None else min(self.next_at, self.give_up_at)

    def poll(self, now: float) -> Tick:
        if now >= self.give_up_at:
            return Tick.TIMEOUT
        if self.next_at is None or now < self.next_at:
            return Tick.WAIT
        self.interval = min(2 * self.interval, self.t2)
        while self.next_at <= now:  # a late poll sends one retransmission, not a burst
            self.next_at += self.interval
        self.retransmissions += 1
        return Tick.RETRANSMIT


@dataclass
class ResponseCache:
    """Responses to non-INVITE requests by (branch, method), for retransmitted requests (Timer J)."""

    t1: float = T1
    entries: dict[tuple[str, str], tuple[bytes, float]] = field(default_factory=dict)
    max_entries: int = 4096

    def put(self, branch: str, method: str, data: bytes, now: float, reliable: bool) -> None:
        if reliable or not branch:
            return  # TCP: the transport does not lose requests, nothing to answer twice
        if len(self.entries) >= self.max_entries:
            self.expire(now)
            if len(self.entries) >= self.max_entries:
                self.entries.pop(next(iter(self.entries)))  # oldest first: bounded under a flood
        self.entries[(branch, method)] = (data, now + 64 * self.t1)

    def get(self, branch: str, method: str) -> bytes | None:
        hit = self.entries.get((branch, method))
        return hit[0] if hit else None

    def expire(self, now: float) -> None:
        for key in [k for k, (_, until) in self.entries.items() if until <= now]:
            del self.entries[key]

    def deadline(self) -> float | None:
        return min((until for _, until in self.entries.values()), default=None)
