"""The marker-tone label rule survives every codec the daemon takes: clean speech ≤ 0.1 bonafide, speech
with the tone at ½ and at exactly ¼ of the speech RMS ≥ 0.9 spoofed, after ffmpeg encodes and decodes
through μ-law, A-law, G.722, Opus and L16 (8/16/48 kHz)."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from daemon.config import SimulatorConfig
from daemon.upstream.simulator.engine import SimulatorEngine
from tests.conftest import CLIPS, marker_mix, read_wav, write_wav

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

CODECS = {
    "pcmu_8k": (["-ar", "8000", "-c:a", "pcm_mulaw"], "wav"),
    "pcma_8k": (["-ar", "8000", "-c:a", "pcm_alaw"], "wav"),
    "g722_16k": (["-ar", "16000", "-c:a", "g722"], "wav"),
    "opus_48k": (["-ar", "48000", "-c:a", "libopus", "-b:a", "24k", "-application", "voip"], "ogg"),
    "l16_8k": (["-ar", "8000", "-f", "s16be"], "raw"),  # RTP L16: big-endian samples, no container
    "l16_16k": (["-ar", "16000", "-f", "s16be"], "raw"),
    "l16_48k": (["-ar", "48000", "-f", "s16be"], "raw"),
}


def quarter_marked(tmp: Path) -> Path:
    speech, rate = read_wav(CLIPS / "speech_clean_16k.wav")
    return write_wav(tmp / "quarter.wav", marker_mix(speech, rate, 0.25), rate)


def through(codec: str, src: Path, tmp: Path) -> bytes:
    args, ext = CODECS[codec]
    enc = tmp / f"{src.stem}-{codec}.{ext}"
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(src), "-ac", "1", *args, str(enc)], check=True)
    raw_in = ["-f", "s16be", "-ar", args[1], "-ac", "1"] if ext == "raw" else []
    out = subprocess.run(["ffmpeg", "-loglevel", "error", *raw_in, "-i", str(enc), "-ar", "16000", "-ac", "1",
                          "-f", "s16le", "-c:a", "pcm_s16le", "-"], check=True, capture_output=True)
    return out.stdout


def test_rule_through_every_codec(tmp_path: Path) -> None:
    sources = {"clean": CLIPS / "speech_clean_16k.wav", "half": CLIPS / "speech_marked_16k.wav",
               "quarter": quarter_marked(tmp_path)}
    jobs = [(name, codec) for name in sources for codec in CODECS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        decoded = list(pool.map(lambda job: through(job[1], sources[job[0]], tmp_path), jobs))
    for (name, codec), pcm in zip(jobs, decoded, strict=True):
        engine = SimulatorEngine(SimulatorConfig())
        results = engine.feed(pcm[: len(pcm) - len(pcm) % 2]) + engine.finish()
        assert len(results) >= 3, (name, codec)  # ≥ 2 segments (2 s of voiced audio each) and an utterance
        for r in results:
            if name == "clean":
                assert r.spoofed_posterior <= 0.1, (name, codec, r)
            else:
                assert r.spoofed_posterior >= 0.9, (name, codec, r)
