"""A leg's chunks on their way upstream: the bounded send queue, the replay ring and what results
covered (sans-I/O, no asyncio).

Invariants: chunks leave in index order, once per stream; after a broken stream the chunks written
but not yet covered by a result go back in front of the queue, in order, so the next stream gets
them first and no speech goes unanalysed; the queue keeps its bound by dropping the oldest audio,
counted as `spoofwatch_drops_total{ingest="upstream",reason="queue_full"}`.

Memory: the replay buffer keeps only what may still be owed a result. A chunk leaves it as soon as
a result covers it, and silence at its head leaves with it (a chunk under `stall_voiced_dbfs` owes
nothing, see stall.py; the replay then starts at the first voiced chunk, and the new stream's call
time starts there too). It is bounded in chunks by `replay_chunks_for([daemon] replay_buffer_s)`.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

from daemon.model import CHUNK_BYTES, UPSTREAM_RATE_HZ
from daemon.ops.metrics import Metrics

#: one chunk's audio, in seconds (250 ms)
CHUNK_S: Final = CHUNK_BYTES / 2 / UPSTREAM_RATE_HZ
#: chunks whose write time is kept for the result latency histogram: 40 s of audio, longer than the
#: default stall timeout (30 s), after which a stream that owes a result is reopened anyway
WRITTEN_WINDOW_CHUNKS: Final = 160


def replay_chunks_for(seconds: float) -> int:
    """The replay bound in chunks for a bound in seconds (rounded up; 0 turns replay off)."""
    return math.ceil(seconds / CHUNK_S - 1e-9) if seconds > 0 else 0

#: A chunk on its way: (index, start_s, end_s, data, received_at), start/end in leg (call) time. A
#: plain tuple, not a dataclass: tuples of atomic values drop out of the garbage collector's lists
#: (40 kept per leg for replay were 12k tracked objects at 300 calls, scanned by every full collection).
Chunk = tuple[int, float, float, bytes, float]
INDEX: Final = 0
START: Final = 1
END: Final = 2
DATA: Final = 3
RECEIVED: Final = 4


class LegChunks:
    def __init__(self, queue_chunks: int, replay_chunks: int, metrics: Metrics) -> None:
        self.metrics = metrics
        self.queue: deque[Chunk] = deque()
        self.queue_max = queue_chunks
        # (chunk, voiced) written and not yet covered by a result, oldest first; never starts with silence
        self._replay: deque[tuple[Chunk, bool]] = deque(maxlen=max(replay_chunks, 0) or None)
        self._replay_enabled = replay_chunks > 0
        # (chunk end_s, written_at) for result latency
        self._written: deque[tuple[float, float]] = deque(maxlen=WRITTEN_WINDOW_CHUNKS)
        self.covered_until = 0.0  # call time up to which results arrived

    def push(self, item: Chunk) -> None:
        """Queue a new chunk; the oldest queued one is dropped (and counted) when the queue is full."""
        if len(self.queue) >= self.queue_max:
            self.queue.popleft()
            self.metrics.drops.labels("upstream", "queue_full").inc()
        self.queue.append(item)

    def clear(self) -> int:
        """Forget the queued chunks (the leg will not be analysed); returns how many there were."""
        n = len(self.queue)
        self.queue.clear()
        return n

    def written(self, item: Chunk, now: float, voiced: bool = True) -> None:
        """`item` reached a stream at `now` (monotonic clock): keep it for replay (unless it is silence
        with nothing owed before it) and for result latency."""
        self._written.append((item[END], now))
        if self._replay_enabled and (voiced or self._replay):
            self._replay.append((item, voiced))

    def covered(self, end_s: float) -> None:
        """A result covered call time up to `end_s`: what it covered leaves the replay buffer, and so
        does the silence after it."""
        if end_s <= self.covered_until:
            return
        self.covered_until = end_s
        replay, limit = self._replay, end_s + 1e-9
        while replay and (replay[0][0][END] <= limit or not replay[0][1]):
            replay.popleft()

    @property
    def replay_held(self) -> int:
        """Chunks held for replay now."""
        return len(self._replay)

    def requeue_for_replay(self) -> int:
        """Put the written-but-uncovered chunks back in front of the queue, in order, once each;
        returns how many."""
        if not self._replay_enabled:
            return 0
        queued = {c[INDEX] for c in self.queue}
        replay = [c for c, _ in self._replay if c[END] > self.covered_until + 1e-9 and c[INDEX] not in queued]
        self._replay.clear()
        for c in reversed(replay):
            self.queue.appendleft(c)
        while len(self.queue) > self.queue_max + len(replay):  # keep the bound, oldest audio goes first
            self.queue.popleft()
            self.metrics.drops.labels("upstream", "queue_full").inc()
        return len(replay)

    def written_time(self, end_s: float) -> float | None:
        """When the chunk holding call time `end_s` was written (the earliest chunk ending at or after it)."""
        found: float | None = None
        for chunk_end, written_at in reversed(self._written):
            if chunk_end + 1e-6 < end_s:
                break
            found = written_at
        return found
