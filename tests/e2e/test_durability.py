"""Nothing is lost: SIGKILL with events pending and the receiver down, then a restart; and a SIGTERM
with a call in flight drains it (summary emitted, outbox flushed, exit 0)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.e2e.harness import receiver, start_daemon, start_loadgen, write_config

pytestmark = pytest.mark.slow


async def test_sigkill_with_pending_events_loses_nothing(tmp_path: Path) -> None:
    async with receiver(status=503) as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url)
        daemon = await start_daemon(cfg)
        try:
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
            gen = await start_loadgen(url, "--calls", "1", "--clip", "marked", "--track", "inbound")
            assert await gen.wait() == 0
            # both the alert and the summary were attempted and refused: they sit pending in the outbox
            await hook.wait_for(lambda: len(set(hook.failed_ids)) >= 2, timeout=40)
        finally:
            daemon.kill()
            await daemon.stop(signal.SIGKILL)
        refused = set(hook.failed_ids)

        hook.status = 200
        restarted = await start_daemon(cfg)
        try:
            await hook.wait_for(lambda: refused <= set(hook.unique()), timeout=60)
        finally:
            assert await restarted.stop() == 0
    types = sorted(d.event_type for d in hook.unique().values())
    assert types == ["call.spoof_detected", "call.summary"]
    assert set(hook.unique()) == refused  # same webhook-id across the crash: receivers can dedupe


async def test_sigterm_drains_call_in_flight(tmp_path: Path) -> None:
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url)
        daemon = await start_daemon(cfg)
        url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
        gen = await start_loadgen(url, "--calls", "1", "--clip", "marked", "--track", "inbound")
        await asyncio.sleep(4.0)  # the call is mid-way (8 s clip): then the operator stops the daemon
        rc = await daemon.stop(signal.SIGTERM, timeout=40)
        await gen.wait()
        assert rc == 0
        assert len(hook.of_type("call.summary")) == 1, "\n".join(daemon.messages())
        msgs = " ".join(daemon.messages())
        assert "stopping" in msgs and "stopped" in msgs
