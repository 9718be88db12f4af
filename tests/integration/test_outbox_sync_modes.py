"""Both outbox sync modes keep every committed event when the process dies without closing it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.alerts.outbox import Outbox, OutboxWorker
from daemon.clock import SystemClock
from daemon.config import ConfigError, parse_config

CHILD = """
import os, signal, sys
from daemon.alerts.outbox import Endpoint, Outbox, OutboxWorker
from daemon.clock import SystemClock
outbox = Outbox(sys.argv[1], SystemClock(), synchronous=sys.argv[2])
ep = Endpoint("k", "http://127.0.0.1:9/x", (), "X", 1.0)
worker = OutboxWorker(outbox)
futures = [worker.submit(outbox.add, "call.summary", {"n": i}, endpoints=[ep], occurred_at=1.7e9) for i in range(5)]
ids = [f.result() for f in futures]
print(" ".join(ids), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint, no atexit
"""


@pytest.mark.parametrize("mode", ["full", "normal"])
def test_committed_events_survive_sigkill(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "o.db"
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), mode], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == -9, proc.stderr
    committed = proc.stdout.split()
    assert len(committed) == 5
    again = Outbox(path, SystemClock(), synchronous=mode)
    try:
        assert sorted(r["event_id"] for r in again.list_deliveries("pending")) == sorted(committed)
    finally:
        again.close()


def test_group_commit_runs_queued_calls_in_one_transaction_and_isolates_failures(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.db", SystemClock())
    worker = OutboxWorker(outbox)

    def boom() -> None:
        raise RuntimeError("this call fails alone")

    try:
        futures = [worker.submit(outbox.counts), worker.submit(boom), worker.submit(outbox.counts)]
        assert futures[0].result(10)["pending"] == 0 and futures[2].result(10)["pending"] == 0
        with pytest.raises(RuntimeError, match="fails alone"):
            futures[1].result(10)
    finally:
        worker.shutdown()
    with pytest.raises(RuntimeError):
        worker.submit(outbox.counts)  # shut down: like an executor
    outbox.close()


def test_unknown_sync_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        parse_config({"outbox": {"synchronous": "off"}})
    with pytest.raises(ValueError):
        Outbox(tmp_path / "o.db", SystemClock(), synchronous="off")
