"""Chaos: 50 rounds of SIGKILL at random moments, with calls running and the webhook receiver
flapping between up and down. After a final clean run, every event the outbox ever committed has
reached the receiver (de-duplicated on webhook-id): none lost."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.e2e.harness import receiver, start_daemon, start_loadgen, write_config

pytestmark = pytest.mark.slow
ROUNDS = 50


async def flap(hook: object, stop: asyncio.Event, rng: random.Random) -> None:
    while not stop.is_set():
        hook.status = rng.choice([200, 200, 503, 500])  # type: ignore[attr-defined]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(rng.uniform(0.1, 0.5)):
                await stop.wait()


def committed_event_ids(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(str(db))) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM events")}


@pytest.mark.timeout(400)  # 50 daemon starts and kills: about 2 minutes on a quiet 2-core machine
async def test_sigkill_rounds_lose_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261123)
    db = tmp_path / "outbox.sqlite3"
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=db, webhook_url=hook.url)
        cfg.write_text(cfg.read_text().replace(f'path = "{db}"', f'path = "{db}"\nretry_schedule_s = [0.2, 0.5, 1.0]'))
        stop_flapping = asyncio.Event()
        flapper = asyncio.create_task(flap(hook, stop_flapping, rng))
        kills = 0
        try:
            for _ in range(ROUNDS):
                daemon = await start_daemon(cfg)
                url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
                gen = await start_loadgen(url, "--calls", "2", "--clip", rng.choice(["marked", "clean"]), "--fast")
                await asyncio.sleep(rng.uniform(0.0, 2.5))
                daemon.kill()
                await daemon.stop(signal.SIGKILL)
                kills += 1
                with contextlib.suppress(ProcessLookupError):
                    gen.kill()
                await gen.wait()
        finally:
            stop_flapping.set()
            await flapper
        hook.status = 200
        committed = committed_event_ids(db)
        final = await start_daemon(cfg)
        try:
            await hook.wait_for(lambda: committed <= set(hook.unique()), timeout=60)
        finally:
            assert await final.stop() == 0
    assert kills == ROUNDS
    assert len(committed) >= 20, "the rounds should have produced events to lose"
    assert hook.rejected == 0  # every delivery carried a valid signature
    received = set(hook.unique())
    assert committed <= received  # none lost
    assert received <= committed_event_ids(db)  # and nothing invented
    types = {d.event_type for d in hook.unique().values()}
    assert {"call.spoof_detected", "call.summary"} <= types
