"""The live operator page in a real browser: Debian's headless Chromium, driven by Playwright's Python
package (`executable_path=/usr/bin/chromium`; never `playwright install`), against the real daemon.

- A Twilio loadgen call with the marked clip shows up live, with its legs, the spoofed verdict and the
  alert delivered to a real receiver; the UI token is asked for once (the login overlay).
- "Try it" publishes Chromium's fake microphone (the marked clip as the fake capture file) over WHIP to
  the daemon: the page shows the new `whip` call, its leg and the spoofed verdict; Stop ends it.

Assertions are on the DOM (ids and data- attributes), never on pixels. Each test saves a screenshot in
tests/artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import asyncio
import importlib.util
import wave
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from tests.e2e.harness import ROOT, receiver, start_daemon, start_loadgen, write_config

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
CLIP = ROOT / "daemon" / "clips" / "speech_marked_16k.wav"
UI_TOKEN = "ui-chromium-token"
WHIP_TOKEN = "whip-chromium-token"

pytestmark = [
    pytest.mark.peer,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (scripts/system-deps.sh installs it)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="needs the playwright package (dev extra)"),
]
BASE_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run"]


def fake_capture_wav(dest: Path) -> Path:
    """The marked clip as a 48 kHz 16-bit mono WAV, the format Chromium's fake capture device reads."""
    with wave.open(str(CLIP), "rb") as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    out = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, 48000)
    samples = np.clip(np.round(out * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(str(dest), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(samples.tobytes())
    return dest


@asynccontextmanager
async def chromium(extra_args: list[str]) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                           args=[*BASE_ARGS, *extra_args])
        try:
            page = await browser.new_page(viewport={"width": 1440, "height": 900})
            console: list[str] = []
            page.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
            page.on("pageerror", lambda exc: console.append(f"pageerror: {exc}"))
            page.console_lines = console
            yield page
        finally:
            await browser.close()


async def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=True)
    return path


def page_errors(page: Any) -> list[str]:
    return [line for line in page.console_lines if line.startswith(("pageerror", "error"))]


async def test_page_shows_a_twilio_call_its_legs_verdict_and_delivered_alert(tmp_path: Path) -> None:
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url)
        daemon = await start_daemon(cfg, env={"SPOOFWATCH_UI_TOKEN": UI_TOKEN, "SPOOFWATCH_WHIP_TOKEN": WHIP_TOKEN})
        try:
            async with chromium([]) as page:
                await page.goto(f"http://127.0.0.1:{daemon.ports['http']}/")
                # the token is asked for once; the API then works by cookie (EventSource included)
                await page.wait_for_selector("#login:not([hidden])", timeout=10_000)
                await page.fill("#login-token", UI_TOKEN)
                await page.click("#login-go")
                await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
                # drawn on the next frame after the state arrived: wait for it, do not race it
                await page.wait_for_selector('#upstream[data-simulated="true"]', timeout=10_000)
                assert await page.is_visible("#sim-banner")

                url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
                gen = await start_loadgen(url, "--calls", "1", "--clip", "marked", "--track", "both",
                                          "--other-clip", "clean", "--param", "agent=4711")
                card = 'article.call[data-verdict="spoofed"]'
                await page.wait_for_selector(card, timeout=60_000)
                assert await page.get_attribute(f'{card} .leg[data-leg="inbound"]', "data-verdict") == "spoofed"
                await page.wait_for_selector(f'{card} .leg[data-leg="outbound"][data-verdict="bonafide"]',
                                             timeout=30_000)
                delivered = '#alerts tbody[data-type="call.spoof_detected"] .dstate[data-delivery-state="delivered"]'
                await page.wait_for_selector(delivered, timeout=30_000)
                shot = await screenshot(page, "live-page-twilio.png")
                assert await asyncio.wait_for(gen.wait(), 60) == 0
                await page.wait_for_selector(f'{card}[data-state="finished"]', timeout=40_000)
                call_id = await page.get_attribute(card, "data-call-id")
                assert "agent=4711" in (await page.text_content(f"{card} .meta") or "")
                # the one expected error: the first /api/state, before the token was given
                assert [e for e in page_errors(page) if "status of 401" not in e] == []
        finally:
            rc = await daemon.stop()
    assert rc == 0 and shot.stat().st_size > 10_000
    (alert,) = hook.of_type("call.spoof_detected")
    assert alert.body["data"]["call_id"] == call_id


async def test_try_it_publishes_the_fake_microphone_over_whip_and_shows_the_spoofed_call(tmp_path: Path) -> None:
    fake = fake_capture_wav(tmp_path / "marked-48k.wav")
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url)
        daemon = await start_daemon(cfg, env={"SPOOFWATCH_WHIP_TOKEN": WHIP_TOKEN, "SPOOFWATCH_UI_TOKEN": ""})
        assert "whip" in daemon.ports, "the daemon did not start its WHIP endpoint ([ingest.whip])"
        try:
            args = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                    f"--use-file-for-fake-audio-capture={fake}%noloop"]
            async with chromium(args) as page:
                await page.goto(f"http://127.0.0.1:{daemon.ports['http']}/")
                await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
                whip_url = await page.text_content("#whip-url")
                assert whip_url == f"http://127.0.0.1:{daemon.ports['whip']}/whip"
                await page.fill("#whip-token", WHIP_TOKEN)
                await page.click("#try-start")
                await page.wait_for_selector('#try-status[data-state="live"]', timeout=30_000)
                card = 'article.call[data-verdict="spoofed"]'
                try:
                    await page.wait_for_selector(card, timeout=60_000)
                except Exception:
                    await screenshot(page, "live-page-try-it-FAILED.png")
                    raise
                assert (await page.text_content(f"{card} .ingest")) == "whip"
                legs = await page.query_selector_all(f"{card} .leg")
                assert len(legs) == 1 and await legs[0].get_attribute("data-verdict") == "spoofed"
                await screenshot(page, "live-page-try-it.png")
                await page.click("#try-stop")
                await page.wait_for_selector('#try-status[data-state="stopped"]', timeout=10_000)
                await page.wait_for_selector(f'{card}[data-state="finished"]', timeout=40_000)
                assert page_errors(page) == []
        finally:
            rc = await daemon.stop()
    assert rc == 0
    alerts = hook.of_type("call.spoof_detected")
    assert [a.body["data"]["ingest"] for a in alerts] == ["whip"]


async def test_page_reconnects_and_resyncs_after_a_daemon_restart(tmp_path: Path) -> None:
    """The event stream breaks when the daemon stops; the page says so, keeps trying, and once a new
    daemon answers on the same port it resyncs from the full state and goes on showing live calls."""
    cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=None)
    env = {"SPOOFWATCH_WHIP_TOKEN": WHIP_TOKEN, "SPOOFWATCH_UI_TOKEN": ""}
    first = await start_daemon(cfg, env=env)
    port = first.ports["http"]
    second = None
    try:
        async with chromium([]) as page:
            await page.goto(f"http://127.0.0.1:{port}/")
            await page.wait_for_selector('#conn[data-state="live"]', timeout=10_000)
            assert await first.stop() == 0
            await page.wait_for_selector('#conn:not([data-state="live"])', timeout=20_000)
            text = cfg.read_text()
            cfg.write_text(text.replace('[http]\nlisten = "127.0.0.1:0"', f'[http]\nlisten = "127.0.0.1:{port}"', 1))
            assert cfg.read_text() != text
            second = await start_daemon(cfg, env=env)
            url = f"ws://127.0.0.1:{second.ports['twilio']}/twilio"
            gen = await start_loadgen(url, "--calls", "1", "--clip", "marked", "--param", "after=restart",
                                      capture=True)
            await page.wait_for_selector('#conn[data-state="live"]', timeout=30_000)
            try:
                await page.wait_for_selector('article.call[data-verdict="spoofed"] .leg[data-leg="inbound"]',
                                             timeout=60_000)
            except Exception:  # say what the page, the load generator and the daemon saw
                out = (await gen.stdout.read()).decode(errors="replace") if gen.stdout else ""
                print("page calls:", await page.eval_on_selector_all(
                    "article.call", "els => els.map(e => [e.dataset.callId, e.dataset.verdict, e.dataset.state])"))
                print("conn:", await page.get_attribute("#conn", "data-state"), "loadgen:", out[-1500:])
                print("daemon:", "\n".join(second.messages()[-30:]))
                raise
            assert "after=restart" in (await page.text_content("article.call .meta") or "")
            assert await asyncio.wait_for(gen.wait(), 60) == 0
    finally:
        first.kill()
        if second is not None:
            assert await second.stop() == 0
