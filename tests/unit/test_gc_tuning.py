"""The GC pause histogram sees real collections; settle_heap freezes the startup heap."""

from __future__ import annotations

import gc

from daemon.ops.gc import GEN0_THRESHOLD, GcPauseWatch, settle_heap
from daemon.ops.metrics import Metrics


def _count(metrics: Metrics, generation: str) -> float:
    return metrics.registry.get_sample_value("spoofwatch_gc_pause_seconds_count", {"generation": generation}) or 0.0


def test_each_collection_is_observed_per_generation_until_uninstalled() -> None:
    metrics = Metrics()
    watch = GcPauseWatch(metrics.gc_pause)
    watch.install()
    watch.install()  # idempotent: one observation per collection, not two
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        watch.uninstall()
    assert _count(metrics, "0") >= 1 and _count(metrics, "2") >= 1
    before = _count(metrics, "2")
    gc.collect(2)
    assert _count(metrics, "2") == before  # uninstalled: nothing observed


def test_settle_heap_freezes_survivors_and_raises_the_young_threshold() -> None:
    old = gc.get_threshold()
    try:
        frozen = settle_heap()
        assert frozen == gc.get_freeze_count() > 1000  # at least this test process's modules
        assert gc.get_threshold()[0] == GEN0_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)
