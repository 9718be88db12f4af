"""One /metrics for many workers: the workers' expositions merged into one (sans-I/O: text in, text out).

Counters and histograms (buckets, _count, _sum) are summed series by series, which is exact. Gauges are
summed too (calls, legs, pending deliveries), except the ones that say a state: `*_up` and the capacity
headroom take the minimum (one degraded or full worker is what an operator must see), `*_simulated` and
`*_ready` the maximum. The gauges where a
per-worker view matters keep one series per worker with a `worker` label; a PromQL `sum()` over them is
still the host's total. `*_created` samples and exemplars are dropped (they cannot be summed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

PER_WORKER = frozenset({"spoofwatch_calls_active", "spoofwatch_legs_active"})
MIN_GAUGES = frozenset({"spoofwatch_upstream_up", "spoofwatch_capacity_headroom"})
MAX_GAUGES = frozenset({"spoofwatch_upstream_simulated", "spoofwatch_ready"})

_Key = tuple[str, tuple[tuple[str, str], ...]]


class _Merged:
    def __init__(self, name: str, kind: str, documentation: str) -> None:
        self.name = name
        self.kind = kind
        self.documentation = documentation
        self.values: dict[_Key, float] = {}

    def add(self, sample_name: str, labels: Mapping[str, str], value: float) -> None:
        key = (sample_name, tuple(sorted(labels.items())))
        old = self.values.get(key)
        if old is None:
            self.values[key] = value
        elif self.name in MIN_GAUGES:
            self.values[key] = min(old, value)
        elif self.name in MAX_GAUGES:
            self.values[key] = max(old, value)
        else:
            self.values[key] = old + value

    def metric(self) -> Metric:
        m = Metric(self.name, self.documentation, self.kind)
        for (sample_name, labels), value in self.values.items():
            m.add_sample(sample_name, dict(labels), value)
        return m


def merge_expositions(texts: Mapping[int, str], extra: Iterable[Metric] = ()) -> bytes:
    """Worker index → its Prometheus text exposition; returns one exposition of them all (plus `extra`,
    the supervisor's own metrics)."""
    merged: dict[str, _Merged] = {}
    for worker, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            entry = merged.get(family.name)
            if entry is None:
                entry = merged[family.name] = _Merged(family.name, family.type, family.documentation)
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = dict(sample.labels)
                if family.name in PER_WORKER:
                    labels["worker"] = str(worker)
                entry.add(sample.name, labels, sample.value)
    metrics = [m.metric() for m in merged.values()] + list(extra)

    class _Collector:
        def collect(self) -> Iterable[Metric]:
            return metrics

        def describe(self) -> list[Any]:
            return []

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector())
    return generate_latest(registry)
