"""The contract between ingest adapters and the call layer.

An ingest adapter (Twilio websocket, RTP, WHIP, ...) owns its sockets and parsers. For each call it
asks a `CallAdmission` for a `CallHandle`, opens one `LegSink` per analysed leg, pushes that leg's
encoded payloads into it and ends the call. Every method here is synchronous and non-blocking, so it
can be called from a datagram callback or a websocket loop; the call layer does the async work
(decode → resample → chunk → upstream → policy → outbox) on tasks it owns.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from daemon.model import AudioFormat, CallInfo


class CallRefused(Exception):
    """Admission said no (limit reached, shutting down). `reason` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class LegSink(Protocol):
    def push(self, payload: bytes, received_at: float) -> None:
        """Encoded audio in the leg's AudioFormat (μ-law bytes, L16 bytes, one G.722/Opus frame).
        `received_at` is the monotonic time the bytes arrived (chunk latency starts there)."""
        ...

    def push_pcm(self, samples: npt.NDArray[np.int16], rate: int, received_at: float) -> None:
        """Already-decoded mono int16 audio at `rate` Hz (RTP decodes by each packet's payload type and
        batches ~100 ms per call). A change of `rate` mid-leg is allowed (the resampler is rebuilt)."""
        ...

    def push_silence(self, seconds: float, received_at: float) -> None:
        """Insert silence for audio the sender lost (RTP gap, Twilio timestamp jump)."""
        ...

    def close(self) -> None:
        """No more audio on this leg: the tail is flushed and the leg's final results awaited."""
        ...


class CallHandle(Protocol):
    @property
    def info(self) -> CallInfo: ...

    def open_leg(self, leg: str, fmt: AudioFormat) -> LegSink:
        """Start analysing one leg (its own resampler and upstream stream). Idempotent per name:
        a second call with the same name returns the same sink."""
        ...

    def dtmf(self, leg: str, digit: str) -> None:
        """A DTMF digit seen on a leg (kept as call metadata, never treated as audio)."""
        ...

    def end(self, reason: str) -> None:
        """The call is over (closes every open leg). Summaries are emitted when legs finish."""
        ...


class CallAdmission(Protocol):
    def admit(self, info: CallInfo) -> CallHandle:
        """Raises CallRefused when the call may not start."""
        ...
