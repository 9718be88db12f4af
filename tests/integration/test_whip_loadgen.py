"""`spoofwatch loadgen whip` as a subprocess against a WhipIngest on 127.0.0.1:0 (recording admission)."""

from __future__ import annotations

import asyncio
import sys

from tests.integration.test_whip_ingest import TOKEN, Whip, assert_nothing_left, start_whip

ROOT_CMD = (sys.executable, "-m", "daemon.cli", "loadgen", "whip")


async def loadgen(*args: str, timeout: float = 60.0) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*ROOT_CMD, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_loadgen_publishes_paced_calls_and_deletes_them() -> None:
    w: Whip = await start_whip()
    try:
        rc, out = await loadgen("--url", w.url, "--token", TOKEN, "--calls", "2", "--clip", "marked",
                                "--duration-s", "1.5", "--param", "call_id=lg", "--param", "run=7")
        assert rc == 0, out
        assert "calls: 2/2 completed" in out and "frames sent: 150" in out  # 2 × 1.5 s of 20 ms frames
        ids = sorted(c.info.call_id for c in w.admission.calls)
        assert ids[0] == "lg" and ids[1].startswith("lg:")
        assert all(c.info.metadata["run"] == "7" for c in w.admission.calls)
        assert [c.end_reason for c in w.admission.calls] == ["delete", "delete"]
        # 1.5 s of clip plus the short silent tail, at 48 kHz, one channel
        assert all(1.4 * 48000 <= c.legs["track-0"].samples <= 2.5 * 48000 for c in w.admission.calls)
        await assert_nothing_left(w)
    finally:
        await w.ingest.close()


async def test_loadgen_reports_refusals_and_bad_clips() -> None:
    w = await start_whip()
    try:
        rc, out = await loadgen("--url", w.url, "--token", "wrong", "--duration-s", "1")
        assert rc == 1 and "calls: 0/1 completed" in out and "POST 401" in out
        rc, out = await loadgen("--url", w.url, "--clip", "/nonexistent.wav")
        assert rc == 2 and "cannot read clip" in out
        rc, out = await loadgen("--url", w.url, "--calls", "0")
        assert rc == 2
        assert w.admission.calls == []
        await assert_nothing_left(w)
    finally:
        await w.ingest.close()
