"""spoofwatch_capacity_headroom = 1 - calls_active (all ingests) / [daemon] capacity_calls, at each scrape."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from daemon.config import DaemonConfig
from daemon.ops.metrics import DEFAULT_CAPACITY_CALLS, Metrics


def headroom(m: Metrics) -> float | None:
    return m.registry.get_sample_value("spoofwatch_capacity_headroom")


def test_headroom_follows_calls_over_every_ingest_and_the_configured_capacity() -> None:
    m = Metrics()
    assert headroom(m) == 1.0
    m.set_capacity(20)
    m.calls_active.labels("twilio").inc(9)
    m.calls_active.labels("rtp").inc(9)
    assert headroom(m) == pytest.approx(0.1)
    m.calls_active.labels("rtp").inc(4)
    assert headroom(m) == pytest.approx(-0.1)  # past the knee: below zero, not clipped
    m.set_capacity(44)  # a SIGHUP with a new capacity_calls
    assert headroom(m) == 0.5
    assert b"spoofwatch_capacity_headroom 0.5" in generate_latest(m.registry)


def test_the_metrics_default_is_the_config_default() -> None:
    assert DaemonConfig().capacity_calls == DEFAULT_CAPACITY_CALLS
