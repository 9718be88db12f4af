"""A real browser publishes over WHIP, cross-origin: headless Chromium loads a page from another origin
(an HTTP server on another port, as the operator page on [http] listen is), captures the marked clip
through its fake microphone and POSTs the offer to the daemon's WHIP endpoint with the bearer token.
Shows CORS is right (preflight for Authorization, Location/ETag readable, error statuses readable),
then the call → webhook path as for any publisher."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
from aiohttp import web

from tests.conftest import read_wav, write_wav
from tests.e2e.harness import WHIP_TOKEN, receiver, start_daemon, write_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium")]

PAGE = """<!doctype html><html><body><pre id="log"></pre>
<script id="params" type="application/json">%PARAMS%</script><script>
const P = JSON.parse(document.getElementById('params').textContent);
const report = (r) => fetch('/report', {method: 'POST', body: JSON.stringify(r)});
const sleep = (ms) => new Promise(r => setTimeout(r, ms));
(async () => {
  const r = {};
  // no voice processing: noise suppression would take the steady marker tone out of the clip
  const stream = await navigator.mediaDevices.getUserMedia(
    {audio: {echoCancellation: false, noiseSuppression: false, autoGainControl: false}});
  const pc = new RTCPeerConnection();
  stream.getTracks().forEach(t => pc.addTransceiver(t, {direction: 'sendonly'}));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(res => { if (pc.iceGatheringState === 'complete') res();
    else pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && res(); });
  const sdp = pc.localDescription.sdp;
  const bad = await fetch(P.url, {method: 'POST', body: sdp,
    headers: {'Content-Type': 'application/sdp', 'Authorization': 'Bearer wrong'}});
  r.bad_status = bad.status;
  r.bad_www = bad.headers.get('WWW-Authenticate');
  const resp = await fetch(P.url + '?call_id=' + P.call_id + '&case=browser', {method: 'POST', body: sdp,
    headers: {'Content-Type': 'application/sdp', 'Authorization': 'Bearer ' + P.token}});
  r.status = resp.status;
  r.location = resp.headers.get('Location');
  r.etag = resp.headers.get('ETag');
  const connected = new Promise(res => { pc.onconnectionstatechange = () => {
    if (['connected', 'failed', 'closed'].includes(pc.connectionState)) res(); }; });
  await pc.setRemoteDescription({type: 'answer', sdp: await resp.text()});
  await Promise.race([connected, sleep(15000)]);
  r.state = pc.connectionState;
  await sleep(P.seconds * 1000);
  const del = await fetch(new URL(r.location, P.url), {method: 'DELETE',
    headers: {'Authorization': 'Bearer ' + P.token}});
  r.delete_status = del.status;
  pc.close();
  await report(r);
})().catch(e => report({error: String(e)}));
</script></body></html>"""


async def serve_page(params: dict[str, Any], reports: asyncio.Queue[dict[str, Any]]) -> tuple[web.AppRunner, int]:
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE.replace("%PARAMS%", json.dumps(params)), content_type="text/html")

    async def report(request: web.Request) -> web.Response:
        reports.put_nowait(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_post("/report", report)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def stop_browser(browser: asyncio.subprocess.Process) -> None:
    """SIGTERM first, so Chromium ends and reaps its own helper processes; the whole group is killed if it
    lingers."""
    with contextlib.suppress(ProcessLookupError):
        browser.terminate()
    try:
        async with asyncio.timeout(10):
            await browser.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)
        await browser.wait()


async def test_chromium_publishes_cross_origin_and_alerts(tmp_path: Path, marked_clip: Path) -> None:
    samples, rate = read_wav(marked_clip)
    wav48 = write_wav(tmp_path / "marked48k.wav", soxr.resample(samples, rate, 48000).astype(np.int16), 48000)
    reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url)
        daemon = await start_daemon(cfg)
        url = f"http://127.0.0.1:{daemon.ports['whip']}/whip"
        runner, page_port = await serve_page({"url": url, "token": WHIP_TOKEN, "call_id": "browser-1",
                                              "seconds": 9}, reports)
        browser = await asyncio.create_subprocess_exec(
            "chromium", "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav48}%noloop", "--autoplay-policy=no-user-gesture-required",
            f"http://127.0.0.1:{page_port}/", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True)  # its own process group: its helpers go with it
        try:
            async with asyncio.timeout(90):
                result = await reports.get()
            await hook.wait_for(lambda: len(hook.of_type("call.summary")) >= 1, timeout=40)
        finally:
            await stop_browser(browser)
            await runner.cleanup()
            rc = await daemon.stop()
        assert rc == 0
    assert "error" not in result, result
    # a cross-origin page can read the refusal (CORS on errors too) and the exposed headers
    assert result["bad_status"] == 401 and result["bad_www"].startswith("Bearer")
    assert result["status"] == 201 and result["location"].startswith("/whip/") and result["etag"]
    assert result["state"] == "connected"
    assert result["delete_status"] == 200
    [summary] = [d.body["data"] for d in hook.of_type("call.summary")]
    assert summary["call_id"] == "browser-1" and summary["ingest"] == "whip"
    assert summary["end_reason"] == "delete" and summary["metadata"]["case"] == "browser"
    alerts = hook.of_type("call.spoof_detected")
    assert len(alerts) == 1, [a.body for a in alerts]
    assert alerts[0].body["data"]["call_id"] == "browser-1"
