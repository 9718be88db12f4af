"""The simulator's label rule. It is a documented marker rule for tests, NOT a deepfake detector.

A segment is *spoofed* when its audio carries a steady 3000 Hz marker tone. Measure:

    share = (energy within MARKER_HZ ± BAND_HZ) / (all energy above DC)

over the segment's voiced audio, Welch-style: Hann-windowed 250 ms blocks (4 Hz resolution), power
spectra summed over the blocks, so only a tone that is present throughout (steady) gets a large
share. Then:

    spoofed posterior = 1 / (1 + exp(-(share - SHARE_CENTER) / SHARE_SCALE))

with SHARE_CENTER = 0.02 and SHARE_SCALE = 0.004. Measured on the project clips (tests assert it):
clean speech has share ≤ 0.002 (posterior ≤ 0.01); speech mixed with a 3000 Hz tone at a quarter of
the speech RMS has share ≥ 0.05 (posterior ≥ 0.999), through G.711 μ/A-law, G.722, Opus and L16.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

RATE_HZ = 16000
MARKER_HZ = 3000.0
BAND_HZ = 40.0
BLOCK = 4000  # 250 ms at 16 kHz: 4 Hz bins
SHARE_CENTER = 0.02
SHARE_SCALE = 0.004

_WINDOW = np.hanning(BLOCK)
_FREQS = np.fft.rfftfreq(BLOCK, 1 / RATE_HZ)
_BAND = (_FREQS > MARKER_HZ - BAND_HZ) & (_FREQS < MARKER_HZ + BAND_HZ)


def block_powers(samples: npt.NDArray[np.int16]) -> tuple[float, float]:
    """(marker-band power, total power above DC) of one block of up to BLOCK samples (zero-padded)."""
    x = np.zeros(BLOCK)
    n = min(len(samples), BLOCK)
    x[:n] = samples[:n]
    power = np.abs(np.fft.rfft(x * _WINDOW)) ** 2
    return float(power[_BAND].sum()), float(power[1:].sum())


def posterior_from_share(share: float) -> float:
    z = (share - SHARE_CENTER) / SHARE_SCALE
    if z < -60:
        return 0.0
    return 1.0 / (1.0 + math.exp(-z))


def spoofed_posterior(band: float, total: float) -> float:
    return posterior_from_share(band / total if total > 0 else 0.0)
