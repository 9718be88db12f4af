"""`spoofwatch analyze` from the CLI: against a standalone `spoofwatch simulator` (an 8 kHz marked clip
prints spoofed results, the clean one bonafide), a stereo file on the embedded simulator (one leg per
channel), and bad input."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import soxr

from tests.conftest import CLIPS, read_wav, write_wav

ENV = {**os.environ, "SPOOFWATCH_CID": "5", "SPOOFWATCH_API_KEY": "analyze-key"}


def cli(*args: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True, text=True, env=env,
                          timeout=90)


def to_8k(src: Path, dst: Path) -> Path:
    pcm, rate = read_wav(src)
    return write_wav(dst, soxr.resample(pcm, rate, 8000).astype(np.int16), 8000)


def rows(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_analyze_against_standalone_simulator(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = subprocess.Popen([sys.executable, "-m", "daemon.cli", "simulator", "--listen", f"127.0.0.1:{port}"],
                           env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        banner = ""
        assert sim.stderr is not None
        for line in sim.stderr:
            banner += line
            if "listening on" in line:
                break
        assert "TEST DOUBLE" in banner
        marked = cli("analyze", str(to_8k(CLIPS / "speech_marked_16k.wav", tmp_path / "m8k.wav")), "--upstream",
                     f"127.0.0.1:{port}")
        clean = cli("analyze", str(to_8k(CLIPS / "speech_clean_16k.wav", tmp_path / "c8k.wav")), "--upstream",
                    f"127.0.0.1:{port}")
    finally:
        sim.send_signal(signal.SIGTERM)
        rc = sim.wait(timeout=20)
        sim.stderr.close()  # type: ignore[union-attr]
    assert rc == 0
    assert marked.returncode == 0, marked.stderr
    got = rows(marked.stdout)
    assert {r["level"] for r in got} == {"segment", "utterance"}
    assert all(r["label"] == "spoofed" and r["simulated"] for r in got)
    assert clean.returncode == 0 and rows(clean.stdout) and all(r["label"] == "bonafide" for r in rows(clean.stdout))


def test_analyze_stereo_on_embedded_simulator_and_bad_input(tmp_path: Path) -> None:
    marked, rate = read_wav(CLIPS / "speech_marked_16k.wav")
    clean, _ = read_wav(CLIPS / "speech_clean_16k.wav")
    stereo = write_wav(tmp_path / "st.wav", np.stack([marked, clean], axis=1), rate)
    res = cli("analyze", str(stereo))
    assert res.returncode == 0, res.stderr
    by_leg: dict[object, set[object]] = {}
    for r in rows(res.stdout):
        by_leg.setdefault(r["leg"], set()).add(r["label"])
    assert by_leg == {"ch0": {"spoofed"}, "ch1": {"bonafide"}}
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    bad = cli("analyze", str(tmp_path / "junk.wav"))
    assert bad.returncode == 2 and "not a readable WAV" in bad.stderr
    no_key = cli("simulator", "--listen", "127.0.0.1:0", env={k: v for k, v in ENV.items()
                                                               if k != "SPOOFWATCH_API_KEY"})
    assert no_key.returncode == 2 and "SPOOFWATCH_API_KEY" in no_key.stderr
