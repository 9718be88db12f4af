"""Logging: JSON lines under systemd (or when not on a terminal), human text on a terminal.
Call-related lines carry `call_id` and `leg` (from `extra=` or the `call_context()` contextvar).
Values of known secret environment variables are redacted if they ever appear in a message."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

_call: contextvars.ContextVar[tuple[str, str | None] | None] = contextvars.ContextVar("spoofwatch_call", default=None)
_STD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
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
                plain = isinstance(value, str | int | float | bool | type(None) | dict | list)
                out[key] = value if plain else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
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


def configure_logging(fmt: str = "auto", level: str = "info", stream: IO[str] | None = None) -> None:
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if choose_format(fmt, out) == "json" else TextFormatter())
    handler.addFilter(_Context())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
