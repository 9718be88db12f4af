"""The garbage collector, tuned for steady latency, and its pauses measured.

CPython's cyclic collector stops the event loop while it scans. A full (generation 2) collection
walks every tracked object: at startup that is ~56k objects of imported modules, protobuf
descriptors, gRPC and aiohttp, none of which will ever be garbage; with 250–300 calls open, full
collections measured 60–85 ms and were a large part of the chunk-latency tail (benchmarks/README.md).
So, once the daemon is up:

- `gc.freeze()` moves everything alive after startup into the permanent generation: collections
  then scan only what calls created;
- young collections run every 5000 net allocations (CPython: 700), each scanning at most that
  many objects (≤ 5 ms measured at 300 calls); 20000 made each one 10–20 ms;
- the middle generation is collected every 2 young collections (CPython: 10): it holds what calls
  created since, and at 10 it grew to 20–50 ms scans at 250 calls.

Measured at 300 calls: no collection over 10 ms in a 30 s run (it was up to 50 ms).

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
GEN1_THRESHOLD = 2
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
