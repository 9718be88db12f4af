"""StallWatch (sans-I/O): a result is owed only for voiced audio; silence, however long, owes nothing."""

from __future__ import annotations

import numpy as np

from daemon.upstream.stall import SEGMENT_CHUNKS, StallWatch
from tests.conftest import CLIPS, read_wav


def tone(dbfs: float) -> bytes:
    t = np.arange(4000) / 16000
    amp = 32768 * 10 ** (dbfs / 20) * np.sqrt(2)  # a sine's RMS is amp / sqrt(2)
    return (amp * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def noise(dbfs: float, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).normal(0, 32768 * 10 ** (dbfs / 20), 4000).astype("<i2").tobytes()


def test_voiced_threshold_is_the_chunk_rms_level() -> None:
    w = StallWatch(stall_s=5, voiced_dbfs=-40)
    assert w.is_voiced(tone(-38)) and not w.is_voiced(tone(-42))
    assert not w.is_voiced(bytes(8000)) and not w.is_voiced(noise(-60)) and not w.is_voiced(b"")
    pcm, _ = read_wav(CLIPS / "speech_marked_16k.wav")
    chunks = [pcm[i:i + 4000].astype("<i2").tobytes() for i in range(0, len(pcm) - 3999, 4000)]
    assert sum(map(w.is_voiced, chunks)) >= len(chunks) - 1  # the project's speech clip reads as speech


def test_silence_never_owes_a_result() -> None:
    w = StallWatch(stall_s=5, voiced_dbfs=-40)
    for i in range(10_000):  # 40 minutes of line noise and digital silence
        w.written(noise(-65, seed=i % 7) if i % 2 else bytes(8000), now=i * 0.25)
    assert w.deadline() is None and not w.check(now=10_000.0)
    assert w.silent_chunks == 10_000 and w.voiced_chunks == 0


def test_clock_starts_at_the_first_voiced_chunk_and_a_result_stops_it() -> None:
    w = StallWatch(stall_s=5, voiced_dbfs=-40)
    w.written(noise(-65), now=1.0)
    w.written(tone(-20), now=2.0)
    w.written(tone(-20), now=3.0)  # a later voiced chunk does not move the clock
    assert w.deadline() == 7.0
    assert not w.check(6.9) and w.check(7.0)
    w.result()
    assert w.deadline() is None and not w.check(100.0)
    w.written(tone(-20), now=50.0)
    assert w.deadline() == 55.0
    w.reset()  # a new stream
    assert w.deadline() is None


def test_segment_only_level_owes_after_a_full_segment_of_voice() -> None:
    w = StallWatch.for_level(5, -40, "segment")
    for i in range(SEGMENT_CHUNKS - 1):
        w.written(tone(-20), now=float(i))
    w.written(bytes(8000), now=20.0)
    assert w.deadline() is None  # a burst shorter than a segment is never answered at this level
    w.written(tone(-20), now=30.0)
    assert w.deadline() == 35.0
    assert StallWatch.for_level(5, -40, "all").owed_after_chunks == 1
