"""The durable outbox: an event exists only once it is committed here (SQLite, WAL, synchronous=FULL).

Each event keeps the exact JSON bytes that are signed and sent, serialized once; one delivery row
per endpoint whose filter takes the event type. Deliveries move pending → delivered | dead |
disabled; a crash at any moment leaves them pending and they are sent after the next start
(at-least-once; receivers dedupe on webhook-id = event id).

SQLite calls run on the event loop thread: each is one small indexed statement or one short
transaction (an fsync of the WAL on commit, ~1 ms), and alerts are rare next to audio frames.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.clock import Clock
from daemon.config import WebhookConfig
from daemon.policy.payloads import iso

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
_B32 = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford


def new_event_id(now_wall: float) -> str:
    """msg_ + a ULID (48-bit ms time + 80 random bits): sortable by time, no '.'."""
    value = (int(now_wall * 1000) << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_B32[value & 31])
        value >>= 5
    return "msg_" + "".join(reversed(chars))


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
    def __init__(self, path: str | os.PathLike[str], clock: Clock) -> None:
        self.path = Path(path)
        self.clock = clock
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, timeout=10.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # writing -----------------------------------------------------------------------------------
    def add(self, event_type: str, data: Mapping[str, Any], *, endpoints: Sequence[Endpoint], occurred_at: float,
            decided_at: float | None = None) -> str:
        """Commit the event and its deliveries in one transaction, then return its id."""
        event_id = new_event_id(occurred_at)
        body = json.dumps({"type": event_type, "timestamp": iso(occurred_at), "data": data},
                          separators=(",", ":"), ensure_ascii=False).encode()
        now = self.clock.wall()
        with self._tx():
            self._db.execute("INSERT INTO events (id, type, created_at, decided_at, body) VALUES (?, ?, ?, ?, ?)",
                             (event_id, event_type, occurred_at, decided_at, body))
            for ep in endpoints:
                if ep.accepts(event_type):
                    self._db.execute("INSERT INTO deliveries (event_id, endpoint, state, next_attempt_at) "
                                     "VALUES (?, ?, 'pending', ?)", (event_id, ep.key, now))
        return event_id

    def _tx(self) -> _Tx:
        return _Tx(self._db)

    def register_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        with self._tx():
            for ep in endpoints:
                self._db.execute("INSERT INTO endpoints (key, url) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                                 "url = excluded.url", (ep.key, ep.url))

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

    def next_due_at(self, endpoints: Sequence[str]) -> float | None:
        if not endpoints:
            return None
        marks = ",".join("?" * len(endpoints))
        row = self._db.execute(f"SELECT MIN(next_attempt_at) FROM deliveries WHERE state = 'pending' "
                               f"AND endpoint IN ({marks})", tuple(endpoints)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def mark_delivered(self, d: Delivery, status: int) -> None:
        self._db.execute("UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, last_status = ?, "
                         "last_error = NULL, delivered_at = ? WHERE event_id = ? AND endpoint = ?",
                         (status, self.clock.wall(), d.event_id, d.endpoint))

    def mark_retry(self, d: Delivery, next_at: float, status: int | None, error: str) -> None:
        self._db.execute("UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?, last_status = ?, "
                         "last_error = ? WHERE event_id = ? AND endpoint = ?",
                         (next_at, status, error[:500], d.event_id, d.endpoint))

    def mark_dead(self, d: Delivery, status: int | None, error: str) -> None:
        self._db.execute("UPDATE deliveries SET state = 'dead', attempts = attempts + 1, last_status = ?, "
                         "last_error = ? WHERE event_id = ? AND endpoint = ?",
                         (status, error[:500], d.event_id, d.endpoint))

    def disable_endpoint(self, key: str, reason: str) -> int:
        with self._tx():
            self._db.execute("UPDATE endpoints SET disabled_reason = ?, disabled_at = ? WHERE key = ?",
                             (reason, self.clock.wall(), key))
            cur = self._db.execute("UPDATE deliveries SET state = 'disabled', last_error = ? "
                                   "WHERE endpoint = ? AND state = 'pending'", (reason, key))
        return cur.rowcount

    def disabled_endpoints(self) -> dict[str, str]:
        rows = self._db.execute("SELECT key, disabled_reason FROM endpoints WHERE disabled_reason IS NOT NULL")
        return {k: r for k, r in rows.fetchall()}

    # administration ----------------------------------------------------------------------------
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

    def replay(self, event_id: str) -> int:
        return self._reset("event_id = ?", (event_id,))

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

    def purge_delivered_before(self, before_wall: float) -> int:
        with self._tx():
            cur = self._db.execute("DELETE FROM deliveries WHERE state = 'delivered' AND delivered_at < ?",
                                   (before_wall,))
            self._db.execute("DELETE FROM events WHERE id NOT IN (SELECT event_id FROM deliveries) "
                             "AND created_at < ?", (before_wall,))
        return cur.rowcount

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for state, n in self._db.execute("SELECT state, COUNT(*) FROM deliveries GROUP BY state"):
            out[state] = n
        return out

    def endpoint_states(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT p.key, p.url, p.disabled_reason, "
            "SUM(d.state = 'pending'), SUM(d.state = 'dead'), MAX(CASE WHEN d.state = 'pending' THEN d.last_status END)"
            " FROM endpoints p LEFT JOIN deliveries d ON d.endpoint = p.key GROUP BY p.key").fetchall()
        return [{"endpoint": k, "url": u, "disabled": r, "pending": p or 0, "dead": dd or 0,
                 "failing": bool(p) and last is not None} for k, u, r, p, dd, last in rows]


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
