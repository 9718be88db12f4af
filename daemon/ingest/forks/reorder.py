"""A bounded reorder buffer (sans-I/O) for frames that carry a monotonically increasing integer
sequence (Telnyx `media.chunk`): items in any order within the window, out in sequence order.

- At the start items are held until `window` have arrived (or `flush()`), so reordering of the very
  first frames is undone too; the lowest held sequence starts playout.
- Afterwards an item equal to the next expected sequence is released at once with any run held
  behind it. An item behind the playout point is dropped: `duplicates` if it was released recently,
  else `late`. A sequence already held is a duplicate too.
- More than `window` late items in a row mean the sender renumbered (a restarted stream): what is
  held is released and the buffer starts over from the next item (`restarts`), so a renumbering
  cannot turn all later audio into "late" drops.
- When `window` items are held and the next expected one still has not come, it is declared lost:
  playout skips to the lowest held sequence and `lost` counts the skipped numbers. `push` returns
  the skipped count with the released items so the caller can fill the gap with silence.

Guarantee (property-tested): when the input is any permutation that only reorders items within
consecutive blocks of at most `window` items, the output is the sorted input, nothing lost.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class ReorderStats:
    released: int = 0
    reordered: int = 0  # arrived ahead of the next expected sequence and had to wait
    late: int = 0
    duplicates: int = 0
    lost: int = 0
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class Released(Generic[T]):
    seq: int
    item: T
    skipped_before: int  # sequence numbers declared lost just before this one


class ReorderBuffer(Generic[T]):
    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.window = window
        self.stats = ReorderStats()
        self._next: int | None = None
        self._heap: list[tuple[int, int, T]] = []  # (seq, arrival tiebreak, item)
        self._held: set[int] = set()
        self._recent: deque[int] = deque(maxlen=4 * window)  # released, to tell duplicates from late
        self._arrivals = 0
        self._late_run = 0

    @property
    def held(self) -> int:
        return len(self._heap)

    def push(self, seq: int, item: T) -> list[Released[T]]:
        if seq in self._held:
            self.stats.duplicates += 1
            return []
        restarted: list[Released[T]] = []
        if self._next is not None and seq < self._next:
            if seq in self._recent:
                self.stats.duplicates += 1
                return []
            self._late_run += 1
            if self._late_run <= self.window:
                self.stats.late += 1
                return []
            # the sender renumbered: release what is held and start over from this item
            self.stats.restarts += 1
            restarted = self._drain(force=True)
            self._next = None
            self._recent.clear()
        self._late_run = 0
        self._arrivals += 1
        heapq.heappush(self._heap, (seq, self._arrivals, item))
        self._held.add(seq)
        if self._next is None:
            if len(self._heap) < self.window:
                return restarted
            self._next = self._heap[0][0]
        elif seq != self._next:
            self.stats.reordered += 1
        return restarted + self._drain(force=False)

    def flush(self) -> list[Released[T]]:
        """Release everything held, in order (end of stream). Gaps between held items count as lost."""
        if self._heap and self._next is None:
            self._next = self._heap[0][0]
        return self._drain(force=True)

    def _drain(self, *, force: bool) -> list[Released[T]]:
        out: list[Released[T]] = []
        assert self._next is not None or not self._heap
        while self._heap:
            assert self._next is not None
            lowest = self._heap[0][0]
            skipped = 0
            if lowest != self._next:
                if not force and len(self._heap) < self.window:
                    break
                skipped = lowest - self._next
                self.stats.lost += skipped
            seq, _, item = heapq.heappop(self._heap)
            self._held.discard(seq)
            self._recent.append(seq)
            self._next = seq + 1
            self.stats.released += 1
            out.append(Released(seq, item, skipped))
        return out
