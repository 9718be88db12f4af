"""Shared parts of the RTP integration tests: a recording CallAdmission (calls, legs, samples,
silence), tone packets, an RtpIngest on real loopback sockets, and polling helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np

from daemon.audio.codecs import encode_ulaw, make_decoder
from daemon.calls.api import CallRefused
from daemon.clock import SystemClock
from daemon.config import RtpIngestConfig
from daemon.ingest.rtp.packet import build_rtp
from daemon.ingest.rtp.server import RtpIngest
from daemon.model import AudioFormat, CallInfo
from daemon.ops.metrics import Metrics


class RecordingLeg:
    def __init__(self, fmt: AudioFormat) -> None:
        self.fmt = fmt
        self.pcm: list[np.ndarray] = []
        self.silence_s = 0.0
        self.closed = False
        self.raw_pushes = 0

    def push(self, payload: bytes, received_at: float) -> None:
        # G.711 in the leg's own format is handed over undecoded (the real sink's path decodes it)
        assert self.fmt.codec.value in ("pcmu", "pcma"), self.fmt
        self.raw_pushes += 1
        self.pcm.append(make_decoder(self.fmt).decode(payload))

    def push_pcm(self, samples: np.ndarray, rate: int, received_at: float) -> None:
        assert rate == 8000
        self.pcm.append(samples)

    def push_silence(self, seconds: float, received_at: float) -> None:
        self.silence_s += seconds

    def close(self) -> None:
        self.closed = True

    @property
    def samples(self) -> np.ndarray:
        return np.concatenate(self.pcm) if self.pcm else np.zeros(0, np.int16)


class RecordingCall:
    def __init__(self, info: CallInfo) -> None:
        self.info = info
        self.legs: dict[str, RecordingLeg] = {}
        self.ended: str | None = None

    def open_leg(self, leg: str, fmt: AudioFormat) -> RecordingLeg:
        return self.legs.setdefault(leg, RecordingLeg(fmt))

    def dtmf(self, leg: str, digit: str) -> None:
        pass

    def end(self, reason: str) -> None:
        self.ended = reason


class Admission:
    def __init__(self, limit: int = 100) -> None:
        self.calls: dict[str, RecordingCall] = {}
        self.limit = limit

    def admit(self, info: CallInfo) -> RecordingCall:
        if len(self.calls) >= self.limit:
            raise CallRefused("max_calls")
        return self.calls.setdefault(info.call_id, RecordingCall(info))


def port_base() -> int:
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").lstrip("gw") or 0)
    return 22000 + 400 * worker + 20 * random.randrange(15)  # below the ephemeral range (32768-60999)


@asynccontextmanager
async def running_ingest(admission: Any = None, **overrides: Any) -> AsyncIterator[tuple[RtpIngest, Any, Metrics]]:
    """An RtpIngest on 10 port pairs of loopback, auto_calls on, fast tick and inactivity timeout."""
    admission, metrics = admission or Admission(), Metrics()
    base = port_base()
    cfg = dataclasses.replace(RtpIngestConfig(), **{
        "enabled": True, "port_min": base, "port_max": base + 19, "inactivity_timeout_ms": 400, "batch_ms": 20,
        "auto_calls": True, **overrides})
    rtp = RtpIngest(cfg, admission, metrics, SystemClock())
    await rtp.start()
    try:
        yield rtp, admission, metrics
    finally:
        await rtp.close()


def tone_packets(n: int, seq0: int = 1000, ssrc: int = 7) -> list[tuple[int, bytes]]:
    t = np.arange(n * 160) / 8000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    ulaw = encode_ulaw(pcm)
    return [(seq0 + i, build_rtp(0, seq0 + i, i * 160, ssrc, ulaw[i * 160:(i + 1) * 160])) for i in range(n)]


async def until(predicate: object, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 (polls the ingest's state)
            await asyncio.sleep(0.02)


def drops(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("spoofwatch_drops_total", {"ingest": "rtp", "reason": reason}) or 0.0
