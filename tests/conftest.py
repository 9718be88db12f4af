"""Shared fixtures: test clips, and the upstream simulator as a real gRPC server on port 0.

Also the skip policy: under CI (env CI set, not "0"/"false") a skipped test FAILS, unless it is marked
`@pytest.mark.allow_skip(reason="…")`: a peer or file missing in CI is a broken CI, not a pass. A
module-level skip (importorskip at import time) always fails there. Run with `-rs` to see the reasons.
"""

from __future__ import annotations

import os
import wave
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import Any

import numpy as np
import pytest


# skip policy ----------------------------------------------------------------------------------
def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(longrepr: Any) -> str:
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "allow_skip(reason): this test may skip under CI=true; say why")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail") or not _in_ci():
        return
    marker = item.get_closest_marker("allow_skip")
    if marker is not None and str(marker.kwargs.get("reason", "")).strip():
        return
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI without an allow_skip(reason=...) marker: "
                       f"{_skip_reason(report.longrepr)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci():
        report.outcome = "failed"
        report.longrepr = f"module skipped under CI: {_skip_reason(report.longrepr)}"

CLIPS = Path(__file__).resolve().parent.parent / "daemon" / "clips"
TEST_CID = 4242
TEST_API_KEY = "test-api-key"


@pytest.fixture(scope="session")
def clean_clip() -> Path:
    """8 s of clean speech, 16 kHz mono s16 WAV: the simulator labels it bonafide."""
    return CLIPS / "speech_clean_16k.wav"


@pytest.fixture(scope="session")
def marked_clip() -> Path:
    """The same speech mixed with a steady 3000 Hz tone at half the speech RMS: labelled spoofed."""
    return CLIPS / "speech_marked_16k.wav"


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(int16 samples, shape (n,) or (n, channels)), rate."""
    with wave.open(str(path)) as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        ch = w.getnchannels()
        rate = w.getframerate()
    return (data.reshape(-1, ch) if ch > 1 else data), rate


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    ch = 1 if samples.ndim == 1 else samples.shape[1]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(ch)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return path


def marker_mix(speech: np.ndarray, rate: int, tone_to_speech_rms: float) -> np.ndarray:
    """Speech plus a steady 3000 Hz tone whose RMS is `tone_to_speech_rms` × the speech RMS (the RMS of
    the voiced 20 ms frames, above −45 dBFS): the simulator's marker rule, at a chosen strength."""
    x = speech.astype(np.float64)
    frames = x[: len(x) // 320 * 320].reshape(-1, 320)
    rms = np.sqrt((frames**2).mean(axis=1))
    voiced_rms = np.sqrt((frames[rms > 32768 * 10 ** (-45 / 20)] ** 2).mean())
    tone = np.sqrt(2) * voiced_rms * tone_to_speech_rms * np.sin(2 * np.pi * 3000 * np.arange(len(x)) / rate)
    return np.clip(x + tone, -32768, 32767).astype(np.int16)


@pytest.fixture
def upstream_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """SPOOFWATCH_CID / SPOOFWATCH_API_KEY set to the values the test simulator accepts."""
    monkeypatch.setenv("SPOOFWATCH_CID", str(TEST_CID))
    monkeypatch.setenv("SPOOFWATCH_API_KEY", TEST_API_KEY)
    return {**os.environ}


@pytest.fixture
async def simulator() -> AsyncIterator[object]:
    """A running SimulatorServer on 127.0.0.1:<free port>; `simulator.port`, `simulator.target`,
    and `simulator.faults` (replace with dataclasses.replace to inject faults)."""
    from daemon.config import SimulatorConfig
    from daemon.upstream.simulator import SimulatorServer

    server = SimulatorServer(SimulatorConfig(), cid=TEST_CID, api_key=TEST_API_KEY)
    await server.start("127.0.0.1:0")
    try:
        yield server
    finally:
        await server.stop(grace=0.5)
