"""The simulator's behaviour as a sans-I/O core: 16 kHz s16le bytes in, deepfake results out.

- Voice activity: 20 ms frames whose RMS is at or above `vad_threshold_dbfs` are voiced; silence
  yields no results at all.
- A segment result for every `segment_s` (2 s) of voiced audio, from the first voiced frame it
  covers to the end of its last one (stream time in seconds).
- An utterance result when an utterance ends: after `utterance_end_silence_ms` of unvoiced audio,
  and at end of stream for an utterance still open.
- Labels come from `rule.py` (the 3000 Hz marker-tone rule), never from a model.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from daemon.config import SimulatorConfig
from daemon.model import Level
from daemon.upstream.simulator.rule import BLOCK, RATE_HZ, block_powers, spoofed_posterior

FRAME = 320  # 20 ms
#: cap of voiced audio an utterance keeps for its own result (the rest only counts)
_ids = itertools.count(1)


@dataclass(frozen=True)
class SimResult:
    level: Level
    start_s: float
    end_s: float
    spoofed_posterior: float
    id: str


class _Acc:
    """Marker-band and total power summed over analysed blocks, plus the span they cover."""

    def __init__(self) -> None:
        self.band = 0.0
        self.total = 0.0
        self.voiced_samples = 0
        self.start_s: float | None = None
        self.end_s = 0.0

    def add(self, band: float, total: float) -> None:
        self.band += band
        self.total += total

    def posterior(self) -> float:
        return spoofed_posterior(self.band, self.total)


class SimulatorEngine:
    def __init__(self, settings: SimulatorConfig, level: Level | None = None) -> None:
        self.settings = settings
        self.level = level
        self._threshold_rms = 32768.0 * 10 ** (settings.vad_threshold_dbfs / 20)
        self._segment_samples = int(settings.segment_s * RATE_HZ)
        self._end_frames = max(1, math.ceil(settings.utterance_end_silence_ms / 20))
        self._pending = b""  # < one frame of bytes
        self._frames_seen = 0
        self._block: list[np.ndarray] = []
        self._block_len = 0
        self._segment = _Acc()
        self._utterance: _Acc | None = None
        self._silent_frames = 0

    @property
    def stream_time_s(self) -> float:
        return self._frames_seen * FRAME / RATE_HZ

    def feed(self, pcm: bytes) -> list[SimResult]:
        if len(pcm) % 2:
            raise ValueError("odd-length audio")
        data = self._pending + pcm
        usable = len(data) - len(data) % (FRAME * 2)
        self._pending = data[usable:]
        samples = np.frombuffer(data[:usable], dtype="<i2")
        out: list[SimResult] = []
        if not len(samples):
            return out
        frames = samples.reshape(-1, FRAME)
        # one vectorised RMS for every 20 ms frame of the message (the per-frame loop only does bookkeeping)
        rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
        for frame, level in zip(frames, rms, strict=True):
            out += self._frame(frame, float(level))
        return out

    def finish(self) -> list[SimResult]:
        out: list[SimResult] = []
        if self._pending:
            frame = np.frombuffer(self._pending + b"\x00" * (FRAME * 2 - len(self._pending)), dtype="<i2")
            self._pending = b""
            out += self._frame(frame, float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))))
        if self._utterance is not None:
            out += self._end_utterance()
        return out

    def _frame(self, frame: np.ndarray, rms: float) -> list[SimResult]:
        start = self.stream_time_s
        self._frames_seen += 1
        end = self.stream_time_s
        out: list[SimResult] = []
        if rms >= self._threshold_rms:
            self._silent_frames = 0
            if self._utterance is None:
                self._utterance = _Acc()
                self._utterance.start_s = start
            self._utterance.end_s = end
            if self._segment.start_s is None:
                self._segment.start_s = start
            self._segment.end_s = end
            self._block.append(frame)
            self._block_len += len(frame)
            self._segment.voiced_samples += len(frame)
            if self._block_len >= BLOCK:
                self._analyse_block()
            if self._segment.voiced_samples >= self._segment_samples:
                out += self._emit_segment()
        elif self._utterance is not None:
            self._silent_frames += 1
            if self._silent_frames >= self._end_frames:
                out += self._end_utterance()
        return out

    def _analyse_block(self) -> None:
        if not self._block:
            return
        band, total = block_powers(np.concatenate(self._block))
        self._block, self._block_len = [], 0
        self._segment.add(band, total)
        if self._utterance is not None:
            self._utterance.add(band, total)

    def _emit_segment(self) -> list[SimResult]:
        self._analyse_block()
        seg = self._segment
        self._segment = _Acc()
        if self.level is Level.UTTERANCE or seg.start_s is None:
            return []
        return [SimResult(Level.SEGMENT, seg.start_s, seg.end_s, seg.posterior(), str(next(_ids)))]

    def _end_utterance(self) -> list[SimResult]:
        self._analyse_block()
        utt = self._utterance
        self._utterance = None
        self._silent_frames = 0
        if utt is None or utt.start_s is None or self.level is Level.SEGMENT or utt.total <= 0:
            return []
        return [SimResult(Level.UTTERANCE, utt.start_s, utt.end_s, utt.posterior(), str(next(_ids)))]
