"""Decoded WebRTC audio frames → one speaker's mono samples, batched for the leg (sans-I/O).

aiortc decodes Opus to 48 kHz *stereo* s16 packed frames (960 samples per 20 ms), G.711 to 8 kHz mono
and G.722 to 16 kHz mono. A leg is one speaker, so a stereo frame gives its first channel: averaging
two channels could mix two people (a publisher may put caller and agent left and right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]

#: decoded audio handed to the leg in one push_pcm: one soxr call per 100 ms instead of per 20 ms frame
BATCH_S = 0.1


def first_channel(planes: npt.NDArray[np.int16], channels: int, planar: bool) -> Pcm:
    """The first channel of `av.AudioFrame.to_ndarray()` output: shape (1, n·channels) interleaved for
    packed formats (s16), (channels, n) for planar ones (s16p)."""
    if channels <= 1:
        return planes.reshape(-1)
    first: Pcm = planes[0] if planar else planes.reshape(-1, channels)[:, 0]
    return first


@dataclass
class Batch:
    samples: Pcm
    rate: int
    #: arrival of the batch's first frame: chunk latency then includes the batching delay
    received_at: float


class FrameBatcher:
    """Collects one leg's mono frames into ~`batch_s` arrays. A rate change closes the batch first.
    Call `flush()` at leg end or up to `batch_s` of audio is lost."""

    def __init__(self, batch_s: float = BATCH_S) -> None:
        self.batch_s = batch_s
        self._parts: list[Pcm] = []
        self._samples = 0
        self._rate = 0
        self._first_at = 0.0

    def push(self, samples: Pcm, rate: int, received_at: float) -> list[Batch]:
        out: list[Batch] = []
        if self._parts and rate != self._rate:
            out += self.flush()
        if not self._parts:
            self._rate = rate
            self._first_at = received_at
        self._parts.append(samples)
        self._samples += len(samples)
        if self._samples >= self.batch_s * rate:
            out += self.flush()
        return out

    def flush(self) -> list[Batch]:
        if not self._parts:
            return []
        joined = self._parts[0].copy() if len(self._parts) == 1 else np.concatenate(self._parts)
        batch = Batch(np.ascontiguousarray(joined, dtype=np.int16), self._rate, self._first_at)
        self._parts, self._samples = [], 0
        return [batch]
