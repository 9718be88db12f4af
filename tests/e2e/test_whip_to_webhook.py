"""WebRTC in → webhook out, with real parts only: the daemon started from the CLI as a subprocess
(embedded simulator, WHIP on by default), aiortc publishers from `spoofwatch loadgen whip` in their own
processes (ICE, DTLS-SRTP, Opus over loopback), and a real HTTP receiver verifying every delivery with
the standardwebhooks library."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from daemon.ingest.whip.server import DEV_TOKEN
from tests.e2e.harness import ROOT, WHIP_TOKEN, DaemonProcess, receiver, start_daemon, write_config
from tests.e2e.test_twilio_to_webhook import shipped_config

pytestmark = pytest.mark.slow


async def loadgen_whip(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "loadgen", "whip", "--url", url, "--token", WHIP_TOKEN, "--calls", "1",
        *args, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def metric(http: aiohttp.ClientSession, daemon: DaemonProcess, name: str, labels: str) -> float:
    async with http.get(f"http://127.0.0.1:{daemon.ports['http']}/metrics") as resp:
        text = await resp.text()
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def until_metric(http: aiohttp.ClientSession, daemon: DaemonProcess, name: str, labels: str,
                       predicate: Callable[[float], bool], timeout: float = 30.0) -> float:
    async with asyncio.timeout(timeout):
        while True:
            value = await metric(http, daemon, name, labels)
            if predicate(value):
                return value
            await asyncio.sleep(0.2)


async def test_whip_marked_publisher_alerts_once_clean_one_does_not(tmp_path: Path) -> None:
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url)
        daemon = await start_daemon(cfg)
        try:
            url = f"http://127.0.0.1:{daemon.ports['whip']}/whip"
            procs = [await loadgen_whip(url, "--clip", "marked", "--param", "case=spoof",
                                        "--param", "call_id=whip-spoof-1"),
                     await loadgen_whip(url, "--clip", "clean", "--param", "case=clean")]
            outs = await asyncio.gather(*(asyncio.wait_for(p.communicate(), 60) for p in procs))
            for proc, (out, _) in zip(procs, outs, strict=True):
                assert proc.returncode == 0, out.decode()
                assert "calls: 1/1 completed" in out.decode()
            await hook.wait_for(lambda: len(hook.of_type("call.summary")) >= 2, timeout=40)
            async with aiohttp.ClientSession() as http:
                await until_metric(http, daemon, "spoofwatch_outbox_pending", "", lambda v: v == 0)
                alerted = await metric(http, daemon, "spoofwatch_calls_total", 'ingest="whip",outcome="alerted"')
                clean = await metric(http, daemon, "spoofwatch_calls_total", 'ingest="whip",outcome="clean"')
                frames = await metric(http, daemon, "spoofwatch_frames_received_total", 'ingest="whip"')
        finally:
            rc = await daemon.stop()
        assert rc == 0
    assert (alerted, clean) == (1.0, 1.0)
    assert frames > 2 * 300  # two 8 s clips of 20 ms frames, most of them
    assert hook.rejected == 0
    summaries = {d.body["data"]["metadata"]["case"]: d.body["data"] for d in hook.of_type("call.summary")}
    assert set(summaries) == {"spoof", "clean"}
    assert summaries["spoof"]["call_id"] == "whip-spoof-1"
    assert summaries["clean"]["call_id"].startswith("whip-")
    assert all(s["ingest"] == "whip" and s["end_reason"] == "delete" for s in summaries.values())
    assert all(set(s["legs"]) == {"track-0"} for s in summaries.values())
    alerts = hook.of_type("call.spoof_detected")
    assert len(alerts) == 1, [a.body for a in alerts]
    alert = alerts[0].body["data"]
    assert alert["call_id"] == "whip-spoof-1" and alert["leg"] == "track-0"
    assert alert["metadata"]["case"] == "spoof" and "whip_session" in alert["metadata"]
    assert alert["simulated"] is True and alert["posterior"] >= alert["threshold"]
    assert summaries["spoof"]["legs"]["track-0"]["alerted"] is True
    assert summaries["clean"]["legs"]["track-0"]["alerted"] is False


async def test_killed_publisher_call_ends_on_inactivity(tmp_path: Path) -> None:
    """A publisher that vanishes without DELETE (SIGKILL: no DTLS close, no RTCP BYE) ends its call
    within inactivity_timeout_ms (5 s by default), and the call's summary goes out."""
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url)
        daemon = await start_daemon(cfg)
        try:
            url = f"http://127.0.0.1:{daemon.ports['whip']}/whip"
            proc = await loadgen_whip(url, "--clip", "clean", "--duration-s", "120", "--param", "case=vanish")
            try:
                async with aiohttp.ClientSession() as http:
                    await until_metric(http, daemon, "spoofwatch_frames_received_total", 'ingest="whip"',
                                       lambda v: v >= 50)
                    proc.send_signal(signal.SIGKILL)
                    await proc.wait()
                    killed_at = asyncio.get_running_loop().time()
                    await hook.wait_for(lambda: len(hook.of_type("call.summary")) >= 1, timeout=30)
                    waited = asyncio.get_running_loop().time() - killed_at
                    assert await metric(http, daemon, "spoofwatch_calls_active", 'ingest="whip"') == 0
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        finally:
            rc = await daemon.stop()
        assert rc == 0
    [summary] = [d.body["data"] for d in hook.of_type("call.summary")]
    assert summary["metadata"]["case"] == "vanish"
    assert summary["end_reason"] == "inactivity", summary
    assert summary["duration_s"] < 60  # ended long before the 120 s the publisher meant to send
    print(f"killed publisher: summary {waited:.1f} s after SIGKILL (inactivity timeout 5 s)")


async def test_make_run_story_dev_token_out_of_the_box(tmp_path: Path) -> None:
    """The shipped config.toml with `make run`'s default token, and `spoofwatch loadgen whip` from a
    shell without any token set: it publishes with the same development token and alerts; the daemon
    warns that the development token is in use."""
    async with receiver() as hook:
        daemon = await start_daemon(shipped_config(tmp_path, hook.url), env={"SPOOFWATCH_WHIP_TOKEN": DEV_TOKEN})
        try:
            url = f"http://127.0.0.1:{daemon.ports['whip']}/whip"
            env = {k: v for k, v in os.environ.items() if k != "SPOOFWATCH_WHIP_TOKEN"}
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemon.cli", "loadgen", "whip", "--url", url, "--clip", "marked", cwd=str(ROOT),
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, out.decode()
            await hook.wait_for(lambda: len(hook.of_type("call.summary")) >= 1, timeout=40)
            await hook.wait_for(lambda: len(hook.of_type("call.spoof_detected")) >= 1, timeout=10)
        finally:
            rc = await daemon.stop()
        assert rc == 0
    warnings = [line for line in daemon.lines if line.get("level") == "warning"
                and line.get("logger") == "spoofwatch.ingest.whip" and "development token" in str(line.get("msg"))]
    assert len(warnings) == 1
    assert len(hook.of_type("call.spoof_detected")) == 1
