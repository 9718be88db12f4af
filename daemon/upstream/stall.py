"""When does a leg's stream owe a result? (sans-I/O: chunks and times in, a deadline out)

Silence is not a fault: the upstream answers only voiced audio, so a leg that is silent (a caller on
hold, an agent listening) gets no results and must not be taken for a stalled stream. The stall
clock starts only when the upstream was owed a result: at the first *voiced* chunk written since the
last result (or, when only segment results are asked for, once a full segment of voiced chunks was
written: a shorter burst is never answered at that level). A transport that died quietly (no
audio and no results flow) is the business of the channel's HTTP/2 keepalive (see channels.py),
not of this clock.

The voiced test is deliberately cheap and conservative: the RMS level of the whole 250 ms chunk
against `stall_voiced_dbfs`. A chunk loud enough on average holds at least one 20 ms frame at least
that loud, which any upstream voice detector with a lower threshold counts as speech.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The service answers every 2 s of voiced audio with a segment result (seed docs): 8 chunks of 250 ms.
SEGMENT_CHUNKS = 8
_FULL_SCALE_SQ = 32768.0 * 32768.0


@dataclass
class StallWatch:
    """One leg's "result owed since" clock. The writer calls `written()` for each chunk it wrote, the
    reader `result()` for each result it read and `check()` whenever it woke up without one.
    Times are in any one monotonic clock (the caller's)."""

    stall_s: float
    voiced_dbfs: float
    #: voiced chunks since the last result after which a result is owed
    owed_after_chunks: int = 1
    voiced_since_result: int = 0
    owed_since: float | None = None
    #: observable progress, for health detail and tests: wake-ups that found no stall, chunks by kind
    checks: int = 0
    voiced_chunks: int = 0
    silent_chunks: int = 0
    _threshold_energy: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._threshold_energy = _FULL_SCALE_SQ * 10 ** (self.voiced_dbfs / 10)

    @classmethod
    def for_level(cls, stall_s: float, voiced_dbfs: float, result_level: str) -> StallWatch:
        return cls(stall_s, voiced_dbfs, SEGMENT_CHUNKS if result_level == "segment" else 1)

    def reset(self) -> None:
        """A new stream: nothing is owed on it yet (replayed chunks are counted again as written)."""
        self.voiced_since_result = 0
        self.owed_since = None

    def is_voiced(self, chunk: bytes) -> bool:
        x = np.frombuffer(chunk, dtype="<i2", count=len(chunk) // 2).astype(np.float64)
        return bool(x.size) and float(np.dot(x, x)) >= self._threshold_energy * x.size

    def written(self, chunk: bytes, now: float) -> bool:
        """Record one chunk written at `now`; returns whether it counted as voiced."""
        voiced = self.is_voiced(chunk)
        if not voiced:
            self.silent_chunks += 1
            return False
        self.voiced_chunks += 1
        self.voiced_since_result += 1
        if self.owed_since is None and self.voiced_since_result >= self.owed_after_chunks:
            self.owed_since = now
        return True

    def result(self) -> None:
        self.voiced_since_result = 0
        self.owed_since = None

    def deadline(self) -> float | None:
        """When the stream counts as stalled unless a result arrives first (None: nothing owed)."""
        return None if self.owed_since is None else self.owed_since + self.stall_s

    def check(self, now: float) -> bool:
        """True when a result was owed for `stall_s` and none came."""
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            return True
        self.checks += 1
        return False
