"""Decoded WebRTC audio frames → one speaker's mono samples, grouped for the leg (sans-I/O).

A leg is one speaker, so a stereo frame gives its first channel: averaging two channels could mix two
people (a publisher may put caller and agent left and right). daemon/ingest/whip/decode.py decodes.

The frames a track received in one event-loop iteration go to the leg together, in one `push_pcm` (one
soxr call). A chunk's latency then counts from the arrival of the group's *first* frame: at most one
loop iteration before the frame that completed the chunk, so the latency is never under-reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Pcm = npt.NDArray[np.int16]


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
    #: arrival of the batch's first frame (monotonic s)
    received_at: float


def group_by_rate(parts: list[tuple[Pcm, int, float]]) -> list[Batch]:
    """(mono samples, rate, arrival) frames in order → one contiguous batch per run of equal rate."""
    out: list[Batch] = []
    run: list[Pcm] = []
    rate, first_at = 0, 0.0

    def close() -> None:
        joined = run[0] if len(run) == 1 else np.concatenate(run)
        out.append(Batch(np.ascontiguousarray(joined, dtype=np.int16), rate, first_at))

    for samples, r, at in parts:
        if run and r != rate:
            close()
            run = []
        if not run:
            rate, first_at = r, at
        run.append(samples)
    if run:
        close()
    return out
