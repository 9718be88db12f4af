"""The pure parts of multi-worker mode: what each worker gets, how expositions merge, what a worker says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.config import parse_config
from daemon.ops.metrics import Metrics
from daemon.workers.merge import merge_expositions
from daemon.workers.notify import PORTS_KEY, WorkerReport
from daemon.workers.plan import outbox_partitions, rtp_slice, worker_config, worker_count


@given(st.integers(1024, 60000), st.integers(2, 4000), st.integers(1, 16))
def test_rtp_slices_are_disjoint_pairs_covering_the_range(port_min: int, width: int, count: int) -> None:
    port_max = min(port_min + width, 65535)
    first = port_min + port_min % 2
    pairs = (port_max - first + 1) // 2
    if pairs < count:
        with pytest.raises(ValueError, match="cannot be split"):
            rtp_slice(port_min, port_max, 0, count)
        return
    slices = [rtp_slice(port_min, port_max, i, count) for i in range(count)]
    covered: list[int] = []
    for lo, hi in slices:
        assert lo % 2 == 0 and hi % 2 == 1 and port_min <= lo < hi <= port_max
        covered += range(lo, hi + 1)
    assert len(covered) == len(set(covered)) == 2 * pairs  # disjoint, every whole pair used
    sizes = [hi - lo + 1 for lo, hi in slices]
    assert max(sizes) - min(sizes) <= 2  # as even as pairs allow


def test_worker_config_moves_private_listeners_and_partitions_the_outbox() -> None:
    cfg = parse_config({"ingest": {"rtp": {"enabled": True, "port_min": 20000, "port_max": 20999}},
                        "outbox": {"path": "/var/lib/spoofwatch/outbox.sqlite3"}})
    assert worker_config(cfg, 0, 1) is cfg
    w1 = worker_config(cfg, 1, 2, {"websocket": "127.0.0.1:18080"})
    assert w1.http.listen == "127.0.0.1:0"
    assert w1.ingest.rtp.control_listen == "127.0.0.1:0" and w1.ingest.whip.listen == "127.0.0.1:0"
    assert (w1.ingest.rtp.port_min, w1.ingest.rtp.port_max) == (20500, 20999)
    assert w1.ingest.websocket.listen == "127.0.0.1:18080"
    assert w1.outbox.path == "/var/lib/spoofwatch/outbox-1.sqlite3"
    assert w1.policy == cfg.policy and w1.upstream == cfg.upstream


def test_worker_count() -> None:
    assert worker_count(3) == 3
    assert worker_count("auto", cores=2) == 2
    assert worker_count("auto") >= 1


def test_outbox_partitions_found_in_index_order(tmp_path: Path) -> None:
    base = tmp_path / "outbox.sqlite3"
    for name in ("outbox-10.sqlite3", "outbox-2.sqlite3", "outbox.sqlite3", "outbox-x.sqlite3", "other-1.sqlite3"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in outbox_partitions(base)] == ["outbox.sqlite3", "outbox-2.sqlite3", "outbox-10.sqlite3"]


def test_merge_sums_counters_and_histograms_and_keeps_states_right() -> None:
    a, b = Metrics(), Metrics()
    a.calls.labels("twilio", "alerted").inc(2)
    b.calls.labels("twilio", "alerted").inc(5)
    b.calls.labels("rtp", "clean").inc(1)
    for v in (0.001, 0.3):
        a.chunk_latency.observe(v)
    b.chunk_latency.observe(0.002)
    a.calls_active.labels("twilio").set(3)
    b.calls_active.labels("twilio").set(4)
    a.upstream_up.set(1)
    b.upstream_up.set(0)
    a.upstream_simulated.set(1)
    b.upstream_simulated.set(1)
    out = merge_expositions({0: generate_latest(a.registry).decode(), 1: generate_latest(b.registry).decode()})
    fams = {f.name: f for f in text_string_to_metric_families(out.decode())}

    def value(name: str, sample: str, **labels: str) -> float:
        (v,) = [s.value for s in fams[name].samples if s.name == sample and s.labels == labels]
        return v

    assert value("spoofwatch_calls", "spoofwatch_calls_total", ingest="twilio", outcome="alerted") == 7
    assert value("spoofwatch_calls", "spoofwatch_calls_total", ingest="rtp", outcome="clean") == 1
    assert value("spoofwatch_chunk_latency_seconds", "spoofwatch_chunk_latency_seconds_count") == 3
    assert value("spoofwatch_chunk_latency_seconds", "spoofwatch_chunk_latency_seconds_bucket", le="0.0025") == 2
    assert value("spoofwatch_chunk_latency_seconds", "spoofwatch_chunk_latency_seconds_bucket", le="+Inf") == 3
    assert value("spoofwatch_calls_active", "spoofwatch_calls_active", ingest="twilio", worker="0") == 3
    assert value("spoofwatch_calls_active", "spoofwatch_calls_active", ingest="twilio", worker="1") == 4
    assert value("spoofwatch_upstream_up", "spoofwatch_upstream_up") == 0  # one degraded worker: degraded
    assert value("spoofwatch_upstream_simulated", "spoofwatch_upstream_simulated") == 1
    assert not any(s.name.endswith("_created") for f in fams.values() for s in f.samples)


def test_worker_report_reads_what_a_worker_says() -> None:
    r = WorkerReport()
    r.feed(f'STATUS=starting\n{PORTS_KEY}={json.dumps({"http": 4000, "whip": 4001})}'.encode(), now=1.0)
    assert not r.ready and r.ports == {"http": 4000, "whip": 4001}
    r.feed(b"READY=1\nSTATUS=2 calls", now=2.0)
    assert r.ready and r.status == "2 calls" and r.last_watchdog == 2.0
    r.feed(b"WATCHDOG=1", now=7.0)
    assert r.last_watchdog == 7.0
    r.feed(b"garbage\n" + PORTS_KEY.encode() + b"=[1,2]", now=8.0)
    assert r.malformed == 2 and r.ports == {"http": 4000, "whip": 4001}
    r.feed(b"STOPPING=1", now=9.0)
    assert r.stopping and not r.ready
