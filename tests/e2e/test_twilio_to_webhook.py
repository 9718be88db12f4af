"""Call in → webhook out, with real parts only: the daemon started from the CLI as a subprocess
(embedded simulator), Twilio-shaped calls from `spoofwatch loadgen twilio` over a real websocket,
and a real HTTP receiver verifying every delivery with the standardwebhooks library."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.harness import ROOT, receiver, start_daemon, write_config

pytestmark = pytest.mark.slow


async def loadgen(url: str, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon.cli", "loadgen", "twilio", "--url", url,
                                                "--calls", "1", *args, cwd=str(ROOT),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()


async def test_spoofed_leg_alerts_once_clean_call_only_summary(tmp_path: Path) -> None:
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url)
        daemon = await start_daemon(cfg)
        try:
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
            await asyncio.gather(
                loadgen(url, "--clip", "marked", "--track", "both", "--other-clip", "clean", "--param", "case=spoof"),
                loadgen(url, "--clip", "clean", "--track", "both", "--other-clip", "clean", "--param", "case=clean"),
            )
            await hook.wait_for(lambda: len(hook.of_type("call.summary")) >= 2, timeout=40)
            # alerts are committed before their call's summary; let the sender finish anything in flight
            async with aiohttp.ClientSession() as http:
                for _ in range(50):
                    async with http.get(f"http://127.0.0.1:{daemon.ports['http']}/metrics") as resp:
                        text = await resp.text()
                    if "spoofwatch_outbox_pending 0.0" in text:
                        break
                    await asyncio.sleep(0.2)
            assert "spoofwatch_upstream_simulated 1.0" in text
        finally:
            rc = await daemon.stop()
        assert rc == 0

    assert hook.rejected == 0
    summaries = {d.body["data"]["metadata"]["case"]: d.body["data"] for d in hook.of_type("call.summary")}
    assert set(summaries) == {"spoof", "clean"}
    alerts = hook.of_type("call.spoof_detected")
    assert len(alerts) == 1, [a.body for a in alerts]
    alert = alerts[0].body["data"]
    assert alert["leg"] == "inbound"
    assert alert["metadata"]["case"] == "spoof"
    assert alert["simulated"] is True
    assert alert["posterior"] >= alert["threshold"]
    assert isinstance(alert["stream_pid"], int)
    assert alert["call_id"] == summaries["spoof"]["call_id"]
    spoof_legs = summaries["spoof"]["legs"]
    assert spoof_legs["inbound"]["alerted"] is True and spoof_legs["outbound"]["alerted"] is False
    assert spoof_legs["inbound"]["spoofed_segments"] >= 2 and spoof_legs["outbound"]["spoofed_segments"] == 0
    assert all(not leg["alerted"] for leg in summaries["clean"]["legs"].values())
    assert all(leg["simulated"] for s in summaries.values() for leg in s["legs"].values())
