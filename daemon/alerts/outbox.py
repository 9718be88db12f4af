"""The durable outbox: an event exists only once it is committed here (SQLite, WAL, synchronous=FULL).

Each event keeps the exact JSON bytes that are signed and sent, serialized once; one delivery row
per endpoint whose filter takes the event type. Deliveries move pending → delivered | dead |
disabled; a crash at any moment leaves them pending and they are sent after the next start
(at-least-once; receivers dedupe on webhook-id = event id).

The daemon never calls it from the event loop: `WebhookSender` runs every call on the
`OutboxWorker` thread (daemon.alerts.worker), in group commits, so fsyncs (~0.3 ms idle, far more on a busy disk) and
queries never stall audio (a burst of 300 alerts and summaries measured up to ~1 s of chunk-latency
tail when commits ran on the loop, and still ~60 ms with one fsync per event on a thread).
Every method takes one lock, so the CLI, tests and that thread may share an Outbox safely.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from daemon.alerts.redact import redact_url
from daemon.clock import Clock
from daemon.config import WebhookConfig
from daemon.timefmt import iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, created_at REAL NOT NULL, decided_at REAL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    event_id TEXT NOT NULL REFERENCES events(id) ON DELETE CASCADE, endpoint TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL,
    last_status INTEGER, last_error TEXT, delivered_at REAL, PRIMARY KEY (event_id, endpoint));
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
CREATE TABLE IF NOT EXISTS endpoints (key TEXT PRIMARY KEY, url TEXT NOT NULL, disabled_reason TEXT, disabled_at REAL);
"""
STATES = ("pending", "delivered", "dead", "disabled")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """One caller at a time: sqlite3 connections are not safe to share mid-transaction."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return wrapper
_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford


def new_event_id(now_wall: float) -> str:
    """msg_ + a ULID (48-bit ms time + 80 random bits): sortable by time, no '.'."""
    value = (int(now_wall * 1000) << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_B32[value & 31])
        value >>= 5
    return "msg_" + "".join(reversed(chars))


def encode_event(event_type: str, data: Mapping[str, Any], occurred_at: float) -> bytes:
    """The exact bytes that are stored, signed and sent."""
    return json.dumps({"type": event_type, "timestamp": iso(occurred_at), "data": data},
                      separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Endpoint:
    key: str
    url: str
    events: tuple[str, ...]
    secret_env: str
    timeout_s: float

    @classmethod
    def from_config(cls, hook: WebhookConfig) -> Endpoint:
        key = hashlib.sha256(hook.url.encode()).hexdigest()[:12]
        return cls(key, hook.url, tuple(hook.events), hook.secret_env, hook.timeout_s)

    def accepts(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


@dataclass(frozen=True)
class Delivery:
    event_id: str
    endpoint: str
    event_type: str
    body: bytes
    attempts: int
    decided_at: float | None
    created_at: float


class Outbox:
    def __init__(self, path: str | os.PathLike[str], clock: Clock, *, synchronous: str = "full",
                 busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.clock = clock
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # used from the sender's thread and the loop's (admin, shutdown): `_lock` serialises them
        # busy_timeout_s: how long a write waits for another process's lock (e.g. `outbox purge`) before
        # it fails; the daemon then retries it later (held events, delivery marks) instead of losing it
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=busy_timeout_s,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be full or normal, not {synchronous!r}")
        # WAL + NORMAL: a commit is in the OS page cache (survives the process), fsynced at checkpoints
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    @_locked
    def close(self) -> None:
        self._db.close()

    # writing -----------------------------------------------------------------------------------
    @_locked
    def add(self, event_type: str, data: Mapping[str, Any], *, endpoints: Sequence[Endpoint], occurred_at: float,
            decided_at: float | None = None) -> str:
        """Commit the event and its deliveries in one transaction, then return its id."""
        return self.add_encoded(event_type, encode_event(event_type, data, occurred_at), endpoints=endpoints,
                                occurred_at=occurred_at, decided_at=decided_at)

    @_locked
    def add_encoded(self, event_type: str, body: bytes, *, endpoints: Sequence[Endpoint], occurred_at: float,
                    decided_at: float | None = None, event_id: str | None = None) -> str:
        """`add` for a body made by `encode_event` (e.g. on another thread, before the data can change).
        With `event_id` (chosen when the event occurred) a retried commit keeps the event's identity, and
        committing the same id twice is harmless."""
        event_id = event_id or new_event_id(occurred_at)
        # due from when it occurred: this may run on the outbox thread after a caller already asked
        # for what is due "now" (e.g. the shutdown flush right after a call's summary)
        now = min(self.clock.wall(), occurred_at)
        with self._tx():
            self._db.execute("INSERT OR IGNORE INTO events (id, type, created_at, decided_at, body) "
                             "VALUES (?, ?, ?, ?, ?)",
                             (event_id, event_type, occurred_at, decided_at, body))
            for ep in endpoints:
                if ep.accepts(event_type):
                    self._db.execute("INSERT OR IGNORE INTO deliveries (event_id, endpoint, state, next_attempt_at) "
                                     "VALUES (?, ?, 'pending', ?)", (event_id, ep.key, now))
        return event_id

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """One transaction around several calls (`OutboxWorker`): one commit, one fsync."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @_locked
    def register_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        with self._tx():
            for ep in endpoints:
                self._db.execute("INSERT INTO endpoints (key, url) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                 "url = excluded.url", (ep.key, ep.url))

    @_locked
    def due(self, now: float, limit: int, endpoints: Sequence[str]) -> list[Delivery]:
        if not endpoints:
            return []
        marks = ",".join("?" * len(endpoints))
        rows = self._db.execute(
            f"SELECT d.event_id, d.endpoint, e.type, e.body, d.attempts, e.decided_at, e.created_at "
            f"FROM deliveries d JOIN events e ON e.id = d.event_id "
            f"WHERE d.state = 'pending' AND d.next_attempt_at <= ? AND d.endpoint IN ({marks}) "
            f"ORDER BY d.next_attempt_at, e.id LIMIT ?", (now, *endpoints, limit)).fetchall()
        return [Delivery(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]

    @_locked
    def next_due_at(self, endpoints: Sequence[str]) -> float | None:
        if not endpoints:
            return None
        marks = ",".join("?" * len(endpoints))
        row = self._db.execute(f"SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending' "
                               f"AND endpoint IN ({marks})", tuple(endpoints)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    @_locked
    def mark_delivered(self, d: Delivery, status: int) -> None:
        self._db.execute("UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, last_status = ?, "
                         "last_error = NULL, delivered_at = ? WHERE event_id = ? AND endpoint = ?",
                         (status, self.clock.wall(), d.event_id, d.endpoint))

    @_locked
    def mark_retry(self, d: Delivery, next_at: float, status: int | None, error: str) -> None:
        self._db.execute("UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?, last_status = ?, "
                         "last_error = ? WHERE event_id = ? AND endpoint = ?",
                         (next_at, status, error[:500], d.event_id, d.endpoint))

    @_locked
    def mark_dead(self, d: Delivery, status: int | None, error: str) -> None:
        self._db.execute("UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_status = ?, "
                         "last_error = ? WHERE event_id = ? AND endpoint = ?",
                         (status, error[:500], d.event_id, d.endpoint))

    @_locked
    def disable_endpoint(self, key: str, reason: str) -> int:
        with self._tx():
            self._db.execute("UPDATE endpoints SET disabled_reason = ?, disabled_at = ? WHERE key = ?",
                             (reason, self.clock.wall(), key))
            cur = self._db.execute("UPDATE deliveries SET state = 'disabled', last_error = ? "
                                   "WHERE endpoint = ? AND state = 'pending'", (reason, key))
        return cur.rowcount

    @_locked
    def disabled_endpoints(self) -> dict[str, str]:
        rows = self._db.execute("SELECT key, disabled_reason FROM endpoints WHERE disabled_reason IS NOT NULL")
        return {k: r for k, r in rows.fetchall()}

    # administration ----------------------------------------------------------------------------
    @_locked
    def list_deliveries(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, args = ("WHERE d.state = ?", (state,)) if state else ("", ())
        rows = self._db.execute(
            f"SELECT d.event_id, e.type, d.endpoint, p.url, d.state, d.attempts, d.next_attempt_at, d.last_status, "
            f"d.last_error, e.created_at, d.delivered_at FROM deliveries d JOIN events e ON e.id = d.event_id "
            f"LEFT JOIN endpoints p ON p.key = d.endpoint {where} ORDER BY e.created_at DESC LIMIT ?",
            (*args, limit)).fetchall()
        keys = ("event_id", "type", "endpoint", "url", "state", "attempts", "next_attempt_at", "last_status",
                "last_error", "created_at", "delivered_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    @_locked
    def replay(self, event_id: str) -> int:
        return self._reset("event_id = ?", (event_id,))

    @_locked
    def replay_since(self, since_wall: float) -> int:
        return self._reset("event_id IN (SELECT id FROM events WHERE created_at >= ?) "
                           "AND state IN ('dead', 'disabled')", (since_wall,))

    def _reset(self, where: str, args: tuple[Any, ...]) -> int:
        with self._tx():
            keys = [r[0] for r in self._db.execute(f"SELECT DISTINCT endpoint FROM deliveries WHERE {where}", args)]
            cur = self._db.execute(f"UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = ?, "
                                   f"last_error = NULL WHERE {where}", (self.clock.wall(), *args))
            for key in keys:  # an operator replaying to an endpoint re-enables it
                self._db.execute("UPDATE endpoints SET disabled_reason = NULL, disabled_at = NULL WHERE key = ?",
                                 (key,))
        return cur.rowcount

    @_locked
    def purge_delivered_before(self, before_wall: float) -> int:
        with self._tx():
            cur = self._db.execute("DELETE FROM deliveries WHERE state = 'delivered' AND delivered_at < ?",
                                   (before_wall,))
            self._db.execute("DELETE FROM events WHERE id NOT IN (SELECT event_id FROM deliveries) "
                             "AND created_at < ?", (before_wall,))
        return cur.rowcount

    @_locked
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"):
            out[state] = n
        return out

    @_locked
    def endpoint_states(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT p.key, p.url, p.disabled_reason, "
            "SUM(d.state = 'pending'), SUM(d.state = 'dead'), MAX(CASE WHEN d.state = 'pending' THEN d.last_status END)"
            " FROM endpoints p LEFT JOIN deliveries d ON d.endpoint = p.key GROUP BY p.key").fetchall()
        # for display (/healthz is unauthenticated): the URL without its query or userinfo
        return [{"endpoint": k, "url": redact_url(u), "disabled": r, "pending": p or 0, "dead": dd or 0,
                 "failing": bool(p) and last is not None} for k, u, r, p, dd, last in rows]


class _Tx:
    """A transaction, or inside a group commit (`Outbox.group`) a savepoint: a failing part rolls
    back alone and the group goes on."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.nested = False

    def __enter__(self) -> None:
        self.nested = self.db.in_transaction
        self.db.execute("SAVEPOINT part" if self.nested else "BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.nested:
            if exc_type is not None:
                self.db.execute("ROLLBACK TO part")
            self.db.execute("RELEASE part")
        else:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


# the worker lives in its own module (daemon.alerts.worker); imported here too, as it always was
from daemon.alerts.worker import OutboxWorker  # noqa: E402

__all__ = ["STATES", "Delivery", "Endpoint", "Outbox", "OutboxWorker", "encode_event", "new_event_id"]
