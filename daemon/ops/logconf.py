"""Logging: JSON lines under systemd (or when not on a terminal), human text on a terminal.
Call-related lines carry `call_id` and `leg` (from `extra=` or the `call_context()` contextvar).
Values of known secret environment variables are redacted if they ever appear in a message."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import json
import logging
import logging.handlers
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import IO, Any

_call: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar("spoofwatch_call", default=None)
_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_PLAIN = (str, int, float, bool, type(None), dict, list)
#: records waiting for the writer thread before new ones are dropped (and counted)
LOG_QUEUE_RECORDS = 10_000
SECRET_ENVS = ("SPOOFWATCH_API_KEY", "SPOOFWATCH_WEBHOOK_SECRET", "TWILIO_AUTH_TOKEN", "SPOOFWATCH_RTP_TOKEN")


@contextlib.contextmanager
def call_context(call_id: str, leg: str | None = None) -> Iterator[None]:
    token = _call.set((call_id, leg))
    try:
        yield
    finally:
        _call.reset(token)


def _secrets() -> list[str]:
    return [v for k in SECRET_ENVS if len(v := os.environ.get(k, "")) >= 6]


class _Context(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._secrets = _secrets()

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _call.get()
        if ctx is not None:
            if not hasattr(record, "call_id"):
                record.call_id = ctx[0]
            if ctx[1] is not None and not hasattr(record, "leg"):
                record.leg = ctx[1]
        if self._secrets:
            msg = record.getMessage()
            redacted = msg
            for secret in self._secrets:
                redacted = redacted.replace(secret, "[redacted]")
            if redacted != msg:
                record.msg, record.args = redacted, None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD and not key.startswith("_"):
                out[key] = value if isinstance(value, _PLAIN) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # rendered before a hand-over to the writer thread
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}
        if extras:
            base += "  " + " ".join(f"{k}={v}" for k, v in extras.items())
        return base


def choose_format(fmt: str, stream: IO[str]) -> str:
    if fmt != "auto":
        return fmt
    if os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"):
        return "json"
    return "text" if getattr(stream, "isatty", lambda: False)() else "json"


#: how long the writer thread sleeps between batches when nothing urgent is queued
LOG_BATCH_S = 0.1
#: records queued that wake the writer at once (a burst is written before the batch interval ends)
LOG_WAKE_RECORDS = 512


class BatchQueue:
    """The hand-over between the event loop and the writer thread, in batches. `queue.Queue` wakes the
    writer for every record (a lock, a condition notify, a thread switch and a GIL hand-over on the
    daemon's one core, for each line); here the caller appends to a deque and the writer wakes every
    `LOG_BATCH_S`, or at once for an error or worse, a burst of `LOG_WAKE_RECORDS`, or the stop
    sentinel. Bounded: `put_nowait` raises `queue.Full` at `maxsize`. The subset of `queue.Queue`
    that `QueueHandler` and `QueueListener` use."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Any] = deque()
        self._wake = threading.Event()

    def put_nowait(self, item: Any) -> None:
        items = self._items
        if len(items) >= self.maxsize and item is not None:  # the stop sentinel (None) always gets in
            raise queue.Full
        items.append(item)  # atomic under the GIL: no lock on the caller's side
        if (len(items) >= LOG_WAKE_RECORDS or not isinstance(item, logging.LogRecord)
                or item.levelno >= logging.ERROR):
            self._wake.set()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The oldest item; blocks (in `LOG_BATCH_S` naps) until there is one."""
        items = self._items
        while not items:
            if not block:
                raise queue.Empty
            self._wake.wait(LOG_BATCH_S)
            self._wake.clear()
        return items.popleft()

    def qsize(self) -> int:
        return len(self._items)


class BackgroundLogHandler(logging.handlers.QueueHandler):
    """Hands records to a writer thread through a bounded queue: a slow stdout (a full pipe, a busy
    journald) must never stall the event loop, and with it every call. When the queue is full a
    record is dropped and counted; the writer reports the count once it catches up."""

    def __init__(self, maxsize: int = LOG_QUEUE_RECORDS) -> None:
        self.batch = BatchQueue(maxsize)
        super().__init__(self.batch)  # duck-typed: the part of queue.Queue QueueHandler uses
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Render what depends on the caller (args, the exception) here; keep every `extra` field.
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        for key, value in vars(record).items():
            if key not in _STD and not isinstance(value, _PLAIN):
                # e.g. a weak proxy to a connection that is gone by the time the writer formats it
                try:
                    setattr(record, key, str(value))
                except Exception:
                    setattr(record, key, f"<{type(value).__name__}>")
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _DropReporter(logging.Filter):
    """On the writer thread: before the next record, say how many were dropped since the last one."""

    def __init__(self, source: BackgroundLogHandler, sink: logging.Handler) -> None:
        super().__init__()
        self.source, self.sink, self.reported = source, sink, 0

    def filter(self, record: logging.LogRecord) -> bool:
        dropped = self.source.dropped
        if dropped > self.reported:
            note = logging.makeLogRecord({"name": "spoofwatch.log", "levelno": logging.WARNING, "levelname": "WARNING",
                                          "msg": f"{dropped - self.reported} log lines dropped (log queue full)"})
            self.reported = dropped
            self.sink.handle(note)
        return True


def configure_logging(fmt: str = "auto", level: str = "info", stream: IO[str] | None = None, *,
                      background: bool = False) -> Callable[[], None]:
    """Root logging to `stream` (stderr). With `background`, lines are written by a thread (the daemon);
    returns the function that flushes and stops it (a no-op otherwise)."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if choose_format(fmt, out) == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not background:
        handler.addFilter(_Context())
        root.addHandler(handler)
        return lambda: None
    front = BackgroundLogHandler()
    front.addFilter(_Context())  # on the caller's side: the call context lives in its task
    handler.addFilter(_DropReporter(front, handler))
    listener = logging.handlers.QueueListener(front.queue, handler)
    listener.start()
    root.addHandler(front)

    def stop() -> None:
        root.removeHandler(front)
        listener.stop()  # writes what is queued, then joins the thread
        handler.flush()

    return stop
