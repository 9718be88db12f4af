"""The exposition passes `promtool check metrics`, uses base units, and never labels by call id."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client import generate_latest

from daemon.ops.metrics import EXEMPLAR_MAX_CHARS, Metrics, exemplar


def exercised() -> Metrics:
    m = Metrics()
    m.calls_active.labels("twilio").inc()
    m.calls.labels("twilio", "alerted").inc()
    m.drops.labels("twilio", "invalid_json").inc()
    m.chunk_latency.observe(0.004)
    m.result_latency.observe(1.2)
    m.alert_latency.observe(0.05)
    m.results.labels("spoofed", "segment", "true").inc()
    m.upstream_errors.labels("UNAVAILABLE").inc()
    m.webhook_attempts.labels("delivered").inc()
    m.endpoint_disabled.labels("abc123").set(0)
    return m


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_check_metrics_is_clean() -> None:
    text = generate_latest(exercised().registry)
    res = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    assert res.stdout.strip() == b"" and res.stderr.strip() == b""


def test_no_call_id_labels_and_slo_bucket_edges() -> None:
    m = exercised()
    for metric in m.registry.collect():
        for s in metric.samples:
            assert not {"call_id", "call", "call_sid", "stream_sid"} & set(s.labels), s
    edges = {s.labels.get("le") for s in m.registry.collect() for s in s.samples
             if s.name == "spoofwatch_chunk_latency_seconds_bucket"}
    assert "0.02" in edges  # the 20 ms chunk-latency SLO is a bucket edge


def test_exemplar_labels_are_cut_to_the_openmetrics_limit() -> None:
    m = Metrics()
    labels = exemplar(call_id="CA" + "f" * 300, leg="inbound")
    assert sum(len(k) + len(v) for k, v in labels.items()) <= EXEMPLAR_MAX_CHARS
    m.result_latency.observe(1.0, labels)  # prometheus_client raises above the limit: this must not
    assert exemplar(call_id="CA1", leg="outbound") == {"call_id": "CA1", "leg": "outbound"}
