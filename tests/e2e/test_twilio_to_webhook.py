"""Call in → webhook out, with real parts only: the daemon started from the CLI as a subprocess
(embedded simulator), Twilio-shaped calls from `spoofwatch loadgen twilio` over a real websocket
(signed: the signature check is on by default), and a real HTTP receiver verifying every delivery
with the standardwebhooks library. Also: the README's two commands against the shipped config.toml,
and the call summary that still goes out when a shutdown cuts a call whose upstream is slow."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from daemon.ingest.twilio.signature import DEV_AUTH_TOKEN
from tests.e2e.harness import ROOT, TWILIO_TOKEN, receiver, start_daemon, start_loadgen, write_config

pytestmark = pytest.mark.slow


async def loadgen(url: str, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon.cli", "loadgen", "twilio", "--url", url,
                                                "--calls", "1", *args, cwd=str(ROOT),
                                                env={**os.environ, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN},
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


# helpers -------------------------------------------------------------------------------------------
def shipped_config(tmp_path: Path, hook_url: str) -> Path:
    """The repository's config.toml as `make run` uses it, with every port free (0), the outbox in
    tmp_path and a webhook to the test receiver: nothing else changed."""
    text = (ROOT / "config.toml").read_text()
    text = re.sub(r'^((?:control_)?listen) = "127\.0\.0\.1:\d+"', r'\1 = "127.0.0.1:0"', text, flags=re.M)
    text = text.replace('path = "spoofwatch-outbox.sqlite3"', f'path = "{tmp_path / "outbox.sqlite3"}"')
    text += f'\n[[webhook]]\nurl = "{hook_url}"\nsecret_env = "E2E_WEBHOOK_SECRET"\n'
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


# the README's commands ------------------------------------------------------------------------------
async def test_readme_loadgen_command_against_the_shipped_config_alerts(tmp_path: Path) -> None:
    """`make run` (the shipped config.toml, TWILIO_AUTH_TOKEN defaulting to the dev token) and, from a
    second terminal without any token set, the README's loadgen command: the call is signed with the
    same dev token and alerts. An unsigned upgrade is refused with 403 and counted."""
    async with receiver() as hook:
        daemon = await start_daemon(shipped_config(tmp_path, hook.url),
                                    env={"TWILIO_AUTH_TOKEN": DEV_AUTH_TOKEN, "SPOOFWATCH_CID": "1",
                                         "SPOOFWATCH_API_KEY": "local-dev-key"})
        try:
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 403
            second_terminal = {k: v for k, v in os.environ.items() if k != "TWILIO_AUTH_TOKEN"}
            gen = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon.cli", "loadgen", "twilio", "--url", url, "--calls", "1", "--clip",
                "marked", "--track", "both", "--other-clip", "clean", cwd=str(ROOT), env=second_terminal,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await gen.communicate()
            assert gen.returncode == 0, out.decode()
            await hook.wait_for(lambda: len(hook.of_type("call.summary")) == 1, timeout=40)
            metrics = await daemon.metrics()
        finally:
            assert await daemon.stop() == 0
    assert 'spoofwatch_drops_total{ingest="twilio",reason="signature_missing"} 1.0' in metrics
    alerts = hook.of_type("call.spoof_detected")
    assert len(alerts) == 1 and alerts[0].body["data"]["leg"] == "inbound"
    assert any("development token" in m for m in daemon.messages())


async def test_daemon_refuses_to_start_without_the_twilio_token(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=None)
    env = {k: v for k, v in os.environ.items() if k not in ("TWILIO_AUTH_TOKEN", "CREDENTIALS_DIRECTORY")}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon.cli", "run", "--config", str(cfg),
                                                cwd=str(ROOT), env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(60):
        out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 2, text
    assert "validate_signature is true (the default) but TWILIO_AUTH_TOKEN is not set" in text
    assert "make run" in text


# shutdown -----------------------------------------------------------------------------------------
async def test_sigterm_with_slow_upstream_still_sends_the_two_leg_summary(tmp_path: Path) -> None:
    """A two-leg call in flight, the upstream 5 s late with every result, SIGTERM with a 1 s drain and a
    2 s final-results bound: both legs wait together (one after the other they would take 4 s, past the
    registry's cut at 2 + 1 s), and the summary goes out marking both legs' final results missing."""
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url,
                           extra="[simulator]\nresult_latency_ms = 5000\n")
        text = cfg.read_text()
        text = text.replace("drain_timeout_s = 15.0", "drain_timeout_s = 1.0")
        text = text.replace("final_results_timeout_s = 8.0", "final_results_timeout_s = 2.0")
        cfg.write_text(text)
        daemon = await start_daemon(cfg)
        gen = None
        try:
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
            gen = await start_loadgen(url, "--calls", "1", "--clip", "marked", "--track", "both", "--other-clip",
                                      "clean", "--param", "case=cut")
            await daemon.wait_logged(lambda msgs: msgs.count("leg opened") >= 2)
            rc = await daemon.stop(signal.SIGTERM)
        finally:
            daemon.kill()
            if gen is not None:
                if gen.returncode is None:
                    gen.kill()
                await gen.wait()
        assert rc == 0
        await hook.wait_for(lambda: len(hook.of_type("call.summary")) == 1, timeout=5)
    assert hook.rejected == 0
    summary = hook.of_type("call.summary")[0].body["data"]
    assert summary["metadata"]["case"] == "cut" and summary["end_reason"] == "shutdown"
    assert set(summary["legs"]) == {"inbound", "outbound"}
    assert [leg["final_results_received"] for leg in summary["legs"].values()] == [False, False]
