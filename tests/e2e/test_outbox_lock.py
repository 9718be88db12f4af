"""The daemon (a real subprocess) while its outbox file is locked by ANOTHER process (sqlite3 holding
`BEGIN EXCLUSIVE`, as a long `spoofwatch outbox purge` would): alerts are held in memory and
delivered, with their ids, once the lock goes; and SIGHUP / SIGTERM wait for the outbox thread
without blocking the event loop (/healthz keeps answering meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import DaemonProcess, receiver, start_daemon, start_loadgen, write_config
from tests.e2e.sqlite_lock import SqliteLock

pytestmark = pytest.mark.slow


def config(tmp_path: Path, url: str, busy_timeout_s: float) -> tuple[Path, Path]:
    db = tmp_path / "o.sqlite3"
    cfg = write_config(tmp_path / "c.toml", outbox=db, webhook_url=url)
    cfg.write_text(cfg.read_text().replace(f'path = "{db}"', f'path = "{db}"\nbusy_timeout_s = {busy_timeout_s}'))
    return cfg, db


async def get(daemon: DaemonProcess, path: str, timeout: float = 20.0) -> tuple[int, Any]:
    """A request the daemon must answer within `timeout` (a blocked event loop would not)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        async with http.get(f"http://127.0.0.1:{daemon.ports['http']}{path}") as r:
            return r.status, (await r.json() if path == "/healthz" else await r.text())


async def poll(check: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (polls the daemon over HTTP)
            await asyncio.sleep(0.2)


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def committed(db: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        return {row[0]: row[1] for row in conn.execute("SELECT id, type FROM events")}


async def test_alerts_held_while_the_outbox_is_locked_are_delivered_after(tmp_path: Path) -> None:
    async with receiver() as hook:
        cfg, db = config(tmp_path, hook.url, busy_timeout_s=0.2)
        daemon = await start_daemon(cfg)
        lock = SqliteLock(db)
        try:
            await lock.hold()
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
            gen = await start_loadgen(url, "--calls", "1", "--clip", "marked", "--track", "inbound")
            assert await gen.wait() == 0

            async def both_held() -> bool:
                status, body = await get(daemon, "/healthz")
                return bool(status == 200 and body["outbox"]["held"] >= 2)

            await poll(both_held, 40)  # the alert and the summary: not durable, so not sent
            assert hook.attempts == 0
            assert metric((await get(daemon, "/metrics"))[1], "spoofwatch_outbox_held_events") >= 2
            await lock.release()
            await hook.wait_for(lambda: len(hook.unique()) == 2, timeout=60)  # the next retry: ≤ 12 s

            async def none_held() -> bool:
                return metric((await get(daemon, "/metrics"))[1], "spoofwatch_outbox_held_events") == 0

            await poll(none_held, 20)
            text = (await get(daemon, "/metrics"))[1]
        finally:
            await lock.release()
            rc = await daemon.stop()
        assert rc == 0
    assert sorted(d.event_type for d in hook.unique().values()) == ["call.spoof_detected", "call.summary"]
    assert set(hook.unique()) == set(committed(db))  # the ids they were held under reached the receiver
    assert metric(text, 'spoofwatch_outbox_write_errors_total{operation="commit"}') >= 1
    assert metric(text, 'spoofwatch_drops_total{ingest="outbox"') == 0
    assert hook.rejected == 0


async def test_reload_and_shutdown_wait_for_a_locked_outbox_without_blocking_the_loop(tmp_path: Path) -> None:
    async with receiver() as hook:
        # writes wait up to 60 s for the lock: a loop that waited on the outbox thread would stall that long
        cfg, db = config(tmp_path, hook.url, busy_timeout_s=60)
        daemon = await start_daemon(cfg)
        lock = SqliteLock(db)
        try:
            await lock.hold()
            daemon.proc.send_signal(signal.SIGHUP)  # the reload registers the endpoints: an outbox write
            for _ in range(5):
                status, body = await get(daemon, "/healthz")
                assert status == 200 and body["ready"]
            assert not any("config reloaded" in m for m in daemon.messages())  # still waiting on the disk
            await lock.release()
            async with asyncio.timeout(30):
                while not any("config reloaded" in m for m in daemon.messages()):  # noqa: ASYNC110 (log lines)
                    await asyncio.sleep(0.1)

            # SIGTERM while a call's events wait for the lock on the outbox thread
            await lock.hold()
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
            gen = await start_loadgen(url, "--calls", "1", "--clip", "marked", "--track", "inbound", "--fast")
            assert await gen.wait() == 0

            async def call_ended() -> bool:
                return metric((await get(daemon, "/metrics"))[1], "spoofwatch_calls_total") >= 1

            await poll(call_ended, 40)
            daemon.proc.send_signal(signal.SIGTERM)

            async def stopping() -> bool:
                status, body = await get(daemon, "/healthz")
                return bool(status == 200 and not body["ready"])

            await poll(stopping, 20)  # the loop answers while shutdown waits for the outbox thread
            assert daemon.proc.returncode is None
            await lock.release()
            async with asyncio.timeout(60):  # (a second SIGTERM would kill it: shutdown has begun)
                rc = await daemon.proc.wait()
        finally:
            await lock.release()
            daemon.kill()
        assert rc == 0
    assert sorted(committed(db).values()) == ["call.spoof_detected", "call.summary"]  # nothing lost
