"""Logging: JSON lines with call context, written by a background thread that never blocks the caller."""

from __future__ import annotations

import io
import json
import logging
import queue
import threading

import pytest

from daemon.ops.logconf import BackgroundLogHandler, _DropReporter, call_context, configure_logging


@pytest.fixture(autouse=True)
def _restore_root_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_background_lines_keep_context_extras_and_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOOFWATCH_API_KEY", "sekret-key-123")
    out = io.StringIO()
    stop = configure_logging("json", "info", out, background=True)
    log = logging.getLogger("spoofwatch.test")
    writer_threads: set[str] = set()
    original = out.write

    def write(text: str) -> int:
        writer_threads.add(threading.current_thread().name)
        return original(text)

    out.write = write  # type: ignore[method-assign]
    with call_context("CA1", "inbound"):
        log.info("chunk %d of %s", 3, "CA1", extra={"posterior": 0.9})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed with key sekret-key-123")
    log.debug("not at this level")
    stop()
    first, second = _lines(out)
    assert first["msg"] == "chunk 3 of CA1" and first["call_id"] == "CA1" and first["leg"] == "inbound"
    assert first["posterior"] == 0.9 and first["level"] == "info"
    assert second["msg"] == "failed with key [redacted]" and "ValueError: boom" in str(second["exc"])
    assert threading.current_thread().name not in writer_threads  # written by the listener thread


def test_a_full_queue_drops_counts_and_reports() -> None:
    front = BackgroundLogHandler(maxsize=2)
    for i in range(5):
        front.handle(logging.makeLogRecord({"msg": f"line {i}", "levelno": logging.INFO}))
    assert front.dropped == 3 and front.batch.qsize() == 2
    out = io.StringIO()
    sink = logging.StreamHandler(out)
    sink.addFilter(_DropReporter(front, sink))
    sink.handle(logging.makeLogRecord({"msg": "next", "levelno": logging.INFO}))
    sink.handle(logging.makeLogRecord({"msg": "after", "levelno": logging.INFO}))
    assert out.getvalue().splitlines() == ["3 log lines dropped (log queue full)", "next", "after"]


def test_foreground_mode_writes_at_once() -> None:
    out = io.StringIO()
    stop = configure_logging("text", "info", out)
    logging.getLogger("spoofwatch.test").warning("now")
    assert "now" in out.getvalue()
    stop()


def test_extras_are_rendered_before_their_objects_go_away() -> None:
    import weakref

    class Conn:
        def __repr__(self) -> str:
            return "<Conn 1>"

    out = io.StringIO()
    stop = configure_logging("json", "info", out, background=True)
    conn = Conn()
    logging.getLogger("websockets.server").info("connection closed", extra={"websocket": weakref.proxy(conn)})
    del conn  # the proxy is dead before the writer thread formats the line
    stop()
    (line,) = _lines(out)
    assert line["msg"] == "connection closed" and line["websocket"] == "<Conn 1>"


def test_batch_queue_wakes_the_writer_only_for_errors_bursts_and_the_stop() -> None:
    from daemon.ops.logconf import LOG_WAKE_RECORDS, BatchQueue

    q = BatchQueue(maxsize=LOG_WAKE_RECORDS + 10)

    def rec(level: int) -> logging.LogRecord:
        return logging.makeLogRecord({"msg": "x", "levelno": level})

    q.put_nowait(rec(logging.INFO))
    q.put_nowait(rec(logging.WARNING))
    assert not q._wake.is_set()  # info and warnings wait for the next batch: no thread switch per line
    q.put_nowait(rec(logging.ERROR))
    assert q._wake.is_set()
    q._wake.clear()
    for _ in range(LOG_WAKE_RECORDS - 3):
        q.put_nowait(rec(logging.INFO))
    assert q._wake.is_set()  # a burst is written before the batch interval ends
    q._wake.clear()
    q.put_nowait(None)  # QueueListener's stop sentinel
    assert q._wake.is_set() and q.qsize() == LOG_WAKE_RECORDS + 1
    got = [q.get() for _ in range(q.qsize())]
    assert [r.levelno for r in got[:3]] == [logging.INFO, logging.WARNING, logging.ERROR] and got[-1] is None
    with pytest.raises(queue.Empty):
        q.get(block=False)
    for _ in range(q.maxsize):
        q.put_nowait(rec(logging.INFO))
    with pytest.raises(queue.Full):
        q.put_nowait(rec(logging.INFO))
    q.put_nowait(None)  # a full queue still takes the stop sentinel: shutdown never fails on it


def test_background_writer_writes_info_lines_within_a_batch_interval() -> None:
    out = io.StringIO()
    written = threading.Event()
    original = out.write

    def write(text: str) -> int:
        written.set()
        return original(text)

    out.write = write  # type: ignore[method-assign]
    stop = configure_logging("json", "info", out, background=True)
    logging.getLogger("spoofwatch.test").info("soon")
    assert written.wait(5.0)  # no error, no burst, no stop: the writer's next nap ends and writes it
    stop()
    assert _lines(out)[0]["msg"] == "soon"
