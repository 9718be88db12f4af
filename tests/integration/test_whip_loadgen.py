"""`spoofwatch loadgen whip` as a subprocess against a WhipIngest on 127.0.0.1:0 (recording admission),
and its parts: the clip encoded once to Opus, the track handing aiortc those packets, the shared timer."""

from __future__ import annotations

import asyncio
import fractions
import random
import sys
from typing import Any

import av
import numpy as np
import pytest

from daemon.loadgen.whip import (
    FRAME_SAMPLES,
    TAIL_S,
    OpusClip,
    SharedPacer,
    _make_track_class,
    encode_opus,
    load_clip_48k,
)
from daemon.loadgen.wsclient import LoadResult
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
        # every packet handed to aiortc: the clip, the silent tail, and silence until the DELETE is answered
        packets = int(next(line for line in out.splitlines() if line.startswith("packets sent")).split()[-1])
        assert packets >= 150 + 2 * round(TAIL_S / 0.02)
        assert all(c.formats["track-0"].codec.name == "OPUS" for c in w.admission.calls)
        ids = sorted(c.info.call_id for c in w.admission.calls)
        assert ids[0] == "lg" and ids[1].startswith("lg:")
        assert all(c.info.metadata["run"] == "7" for c in w.admission.calls)
        assert [c.end_reason for c in w.admission.calls] == ["delete", "delete"]
        # 1.5 s of clip plus the short silent tail, at 48 kHz, one channel
        # 1.5 s of audio per call reached its leg, at the rate the ingest decodes to (libopus: 16 kHz)
        assert all(len(c.legs["track-0"].rates) == 1 for c in w.admission.calls)
        assert all(1.4 * rate <= c.legs["track-0"].samples <= 2.5 * rate
                   for c in w.admission.calls for rate in c.legs["track-0"].rates)
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


def decode(packets: list[bytes]) -> np.ndarray[Any, Any]:
    codec = av.CodecContext.create("libopus", "r")
    out = []
    for i, data in enumerate(packets):
        packet = av.Packet(data)
        packet.pts = i * FRAME_SAMPLES
        packet.time_base = fractions.Fraction(1, 48000)
        out += [f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0] for f in codec.decode(packet)]
    return np.concatenate(out).astype(np.float64)


def test_clip_is_encoded_once_into_20ms_opus_packets() -> None:
    samples = load_clip_48k("marked")
    clip = encode_opus(samples)
    # one packet per 20 ms frame (the clip is 8 s: 400 frames) and the encoder's lookahead flushed
    assert len(samples) // FRAME_SAMPLES <= len(clip.packets) <= len(samples) // FRAME_SAMPLES + 2
    pcm = decode(clip.packets)
    assert len(pcm) == FRAME_SAMPLES * len(clip.packets)
    rms_in, rms_out = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))), float(np.sqrt(np.mean(pcm ** 2)))
    assert 0.7 * rms_in < rms_out < 1.3 * rms_in  # the speech came through, at its level
    assert float(np.max(np.abs(decode([clip.silence] * 3)))) < 50  # silence decodes to (near) silence
    with pytest.raises(ValueError):
        encode_opus(samples[: FRAME_SAMPLES - 1])


async def test_track_hands_aiortc_paced_packets_then_a_silent_tail() -> None:
    clip = OpusClip([b"\x01a", b"\x01b", b"\x01c"], silence=b"\x01s")
    result = LoadResult()
    track = _make_track_class()(clip, 0.1, result, SharedPacer())  # 5 frames of clip, then the tail
    tail = round(TAIL_S / 0.02)
    loop = asyncio.get_running_loop()
    start = loop.time()
    got = []
    async with asyncio.timeout(30):
        for _ in range(5 + tail):
            got.append(await track.recv())
    assert [bytes(p) for p in got] == [b"\x01a", b"\x01b", b"\x01c", b"\x01a", b"\x01b"] + [b"\x01s"] * tail
    assert [p.pts for p in got] == [i * FRAME_SAMPLES for i in range(5 + tail)]  # the RTP clock, no gaps
    assert all(p.time_base == fractions.Fraction(1, 48000) for p in got)
    assert loop.time() - start >= (5 + tail - 1) * 0.02  # paced on the absolute schedule, never early
    assert track.finished.is_set() and track.packets == 5 + tail
    assert result.frames_sent == 5 and sum(result.lateness_ms) == 5  # lateness of the clip's frames
    track.stop()


async def test_shared_pacer_releases_each_waiter_once_its_time_has_come() -> None:
    loop = asyncio.get_running_loop()
    pacer = SharedPacer()
    now = loop.time()
    dues = [now + 0.005 * k for k in range(40)]
    random.Random(7).shuffle(dues)
    released: list[tuple[float, float]] = []
    futs = []
    for due in dues:
        fut = pacer.wait_until(due)
        fut.add_done_callback(lambda _f, due=due: released.append((due, loop.time())))
        futs.append(fut)
    late = pacer.wait_until(now + 3600)
    async with asyncio.timeout(30):
        await asyncio.gather(*futs)
    assert sorted(d for d, _ in released) == sorted(dues)
    assert all(at >= due for due, at in released)  # never before its time
    assert [d for d, _ in released] == sorted(d for d, _ in released)  # in the order they fall due
    assert not late.done()
    pacer.close()
    assert late.cancelled()
