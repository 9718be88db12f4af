"""Operations with the real daemon process: SIGHUP reload of the threshold mid-call (a bad file is
refused and the old config kept), and admission control beyond max_calls."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CLIPS, marker_mix, read_wav, write_wav
from tests.e2e.harness import receiver, start_daemon, start_loadgen, write_config

pytestmark = pytest.mark.slow


def faint_marker_clip(path: Path) -> Path:
    """16 s of speech with a 3000 Hz tone at 0.16 × the speech RMS: every segment's spoofed posterior
    lands between 0.88 and 0.9995, so a threshold of 1.0 never alerts and 0.5 always does."""
    speech, rate = read_wav(CLIPS / "speech_clean_16k.wav")
    return write_wav(path, np.tile(marker_mix(speech, rate, 0.16), 2), rate)


def segment_results(metrics: str) -> float:
    """Segment results the daemon has read (and its policy judged), over all labels."""
    return sum(float(m.group(1)) for m in re.finditer(
        r'^spoofwatch_results_total\{[^}]*level="segment"[^}]*\} ([0-9.e+]+)$', metrics, flags=re.M))


async def test_sighup_changes_threshold_mid_call_and_bad_file_is_refused(tmp_path: Path) -> None:
    clip = faint_marker_clip(tmp_path / "faint.wav")
    async with receiver() as hook:
        cfg = tmp_path / "c.toml"
        strict = "[policy]\nspoofed_threshold = 1.0\n"
        write_config(cfg, outbox=tmp_path / "o.sqlite3", webhook_url=hook.url, extra=strict)
        good_text = cfg.read_text()
        daemon = await start_daemon(cfg)
        try:
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
            gen = await start_loadgen(url, "--calls", "1", "--clip", str(clip))
            cfg.write_text(good_text.replace("spoofed_threshold = 1.0", "spoofed_treshold = 0.5"))
            daemon.proc.send_signal(signal.SIGHUP)
            await daemon.wait_logged(lambda msgs: any("reload refused" in m for m in msgs))
            # three segments judged while the refused file was on disk: the strict threshold stayed in force
            for _ in range(300):  # bounded poll: the 3rd segment result comes ~6 s into the call
                metrics = await daemon.metrics()
                if segment_results(metrics) >= 3:
                    break
                await asyncio.sleep(0.1)
            assert segment_results(metrics) >= 3, metrics
            assert 'spoofwatch_alerts_total{type="call.spoof_detected"}' not in metrics
            cfg.write_text(good_text.replace("spoofed_threshold = 1.0", "spoofed_threshold = 0.5"))
            daemon.proc.send_signal(signal.SIGHUP)
            await daemon.wait_logged(lambda msgs: any("config reloaded" in m for m in msgs))
            assert await gen.wait() == 0
            await hook.wait_for(lambda: len(hook.of_type("call.summary")) == 1, timeout=30)
        finally:
            assert await daemon.stop() == 0
    msgs = daemon.messages()
    assert any("reload refused" in m and "spoofed_treshold" in m for m in msgs), msgs
    alerts = hook.of_type("call.spoof_detected")
    assert len(alerts) == 1 and alerts[0].body["data"]["threshold"] == 0.5
    # decided after the reload: every result read before it (three segments of 2 s of voiced audio, so up
    # to ≥ 6 s of call time, and any utterance ended by then) was judged under the strict threshold
    assert alerts[0].body["data"]["segment"]["end_s"] > 4.0
    leg = hook.of_type("call.summary")[0].body["data"]["legs"]["inbound"]
    assert leg["spoofed_segments"] >= 4 and leg["alerted"]


async def test_calls_beyond_max_calls_are_refused_cleanly(tmp_path: Path) -> None:
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url)
        cfg.write_text(cfg.read_text().replace("[daemon]\n", "[daemon]\nmax_calls = 2\n", 1))
        daemon = await start_daemon(cfg)
        try:
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
            gen = await start_loadgen(url, "--calls", "3", "--ramp-s", "1", "--clip", "marked", capture=True)
            out, _ = await gen.communicate()
            await hook.wait_for(lambda: len(hook.of_type("call.summary")) == 2, timeout=30)
            import aiohttp

            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{daemon.ports['http']}/metrics") as r:
                    metrics = await r.text()
        finally:
            assert await daemon.stop() == 0
    text_out = out.decode()
    assert gen.returncode == 1 and "calls: 2/3" in text_out and "1013" in text_out, text_out
    assert 'spoofwatch_calls_refused_total{ingest="twilio",reason="max_calls"} 1.0' in metrics
    # the two admitted calls ran to the end, each with its alert and a full summary
    assert len(hook.of_type("call.spoof_detected")) == 2
    for s in hook.of_type("call.summary"):
        assert s.body["data"]["legs"]["inbound"]["segments_seen"] >= 3
