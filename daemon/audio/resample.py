"""One streaming soxr resampler per leg (any input rate → 16 kHz)."""

from __future__ import annotations

import numpy as np
import soxr

from daemon.audio.codecs import Pcm


class StreamResampler:
    """Call `flush()` at leg end: soxr holds back a filter delay's worth of output until then."""

    def __init__(self, in_rate: int, out_rate: int = 16000) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"bad rates {in_rate} → {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16")

    def process(self, samples: Pcm) -> Pcm:
        if self._stream is None:
            return samples
        if len(samples) == 0:
            return np.zeros(0, dtype=np.int16)
        out: Pcm = self._stream.resample_chunk(np.ascontiguousarray(samples, dtype=np.int16))
        return out

    def flush(self) -> Pcm:
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        out: Pcm = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        return out
