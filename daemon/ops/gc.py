"""The garbage collector, tuned for steady latency, and its pauses measured.

CPython's cyclic collector stops the event loop while it scans. A full (generation 2) collection
walks every tracked object: at startup that is ~250k objects of imported modules, protobuf
descriptors, gRPC and aiohttp, none of which will ever be garbage. With 250 calls open it measured
60–85 ms, i.e. the whole chunk-latency tail (benchmarks/README.md). So, once the daemon is up:

- `gc.freeze()` moves everything alive after startup into the permanent generation: collections
  then scan only what calls created;
- a higher generation-0 threshold makes young collections (and so the full ones that follow every
  100 of them) rarer; each young collection still scans at most that many objects (~1 ms).

`GcPauseWatch` times every collection into `spoofwatch_gc_pause_seconds{generation}` so the effect
is visible on the dashboard next to chunk latency.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram

#: Young-generation threshold (CPython's default is 700 net allocations).
GEN0_THRESHOLD = 5_000
GEN1_THRESHOLD = 10
GEN2_THRESHOLD = 10


def settle_heap() -> int:
    """Collect once, then freeze every surviving object out of future scans. Call once startup is done
    (imports, channels, servers) and before calls arrive; returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    return gc.get_freeze_count()


class GcPauseWatch:
    """Observes each collection's duration, per generation. Install once per process."""

    def __init__(self, histogram: Histogram) -> None:
        self._by_generation = [histogram.labels(str(g)) for g in range(3)]  # resolved now: no lookups mid-GC
        self._started = 0.0
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            gc.callbacks.append(self._callback)
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            gc.callbacks.remove(self._callback)
            self._installed = False

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info.get("generation", 2)
        if 0 <= generation <= 2 and self._started:
            self._by_generation[generation].observe(time.perf_counter() - self._started)
        self._started = 0.0


__all__ = ["GEN0_THRESHOLD", "GcPauseWatch", "settle_heap"]
