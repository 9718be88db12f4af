"""Twilio media timing per track, sans-I/O: each frame's `timestamp` and arrival time in, at most one
timing event out. Used by `TwilioStreamParser`; `now` is injected (monotonic seconds).

- `Gap(track, seconds, fill_seconds, unfilled_reason)` for a frame whose timestamp jumps more than
  `GAP_TOLERANCE_MS` past the previous frame's end: Twilio lost that audio. The caller inserts
  `fill_seconds` of silence before the frame so leg time stays aligned with call time. The fill is
  bounded twice, and what is left is counted (`unfilled_reason`, a drops label), never filled:
  - by `gap_fill_max_s` (`gap_unfilled`): a long outage cannot make us push minutes of silence;
  - by the wall-clock time since the previous media of the track, less that frame's own duration
    (`gap_beyond_wall_clock`): lost audio took real time not to arrive, so a sender whose timestamps
    jump ahead faster than real time cannot push more than real-time audio into soxr and upstream.
- `Lag(track, seconds)` for a frame whose timestamp is continuous but which arrived `seconds` later
  than the media time implies (beyond `lag_threshold_s`): our socket or network stalled. Nothing was
  lost, so nothing is filled; it is only counted.
- `Backwards(last_ts_ms)` for a timestamp earlier than the previous one (the parser counts it as
  `timestamp_backwards` and keeps the audio).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Track = Literal["inbound", "outbound"]

MULAW_RATE = 8000
#: μ-law at 8 kHz: one byte per sample, so 8 bytes per millisecond.
_BYTES_PER_MS = MULAW_RATE // 1000
#: Timestamps are whole milliseconds; frames are 20 ms. Anything within half a frame is "continuous".
GAP_TOLERANCE_MS = 10


@dataclass(frozen=True, slots=True)
class Gap:
    """Twilio lost `seconds` of this track; insert `fill_seconds` of silence. When less is filled than
    lost, `unfilled_reason` says which bound cut it (a drops label: gap_unfilled, gap_beyond_wall_clock)."""

    track: Track
    seconds: float
    fill_seconds: float
    unfilled_reason: str = ""


@dataclass(frozen=True, slots=True)
class Lag:
    """Media arrived `seconds` late while its timestamps were continuous: count it, fill nothing."""

    track: Track
    seconds: float


@dataclass(frozen=True, slots=True)
class Backwards:
    """The timestamp went back from `last_ts_ms`."""

    last_ts_ms: int


@dataclass(slots=True)
class _TrackState:
    next_ts_ms: int  # where the next frame should start (previous timestamp + its duration)
    last_ts_ms: int
    last_arrival: float
    last_frame_s: float  # duration of the previous frame's audio
    last_bytes: int  # its size in bytes
    frame_ms: int = 0  # its duration in whole ms (set with last_bytes)

    def __post_init__(self) -> None:
        self.frame_ms = round(self.last_bytes / _BYTES_PER_MS)


class MediaTiming:
    """Timing state of one stream's tracks."""

    def __init__(self, *, gap_fill_max_s: float, lag_threshold_s: float) -> None:
        self.gap_fill_max_s = gap_fill_max_s
        self.lag_threshold_s = lag_threshold_s
        self._tracks: dict[Track, _TrackState] = {}

    def observe(self, track: Track, ts_ms: int, payload_bytes: int, now: float) -> Gap | Lag | Backwards | None:
        """One media frame of `payload_bytes` μ-law bytes stamped `ts_ms`, arrived at `now`."""
        state = self._tracks.get(track)
        if state is None:
            self._tracks[track] = _TrackState(ts_ms + round(payload_bytes / _BYTES_PER_MS), ts_ms, now,
                                              payload_bytes / MULAW_RATE, payload_bytes)
            return None
        event: Gap | Lag | Backwards | None = None
        jump_ms = ts_ms - state.next_ts_ms
        if jump_ms > GAP_TOLERANCE_MS:
            event = self._gap(track, jump_ms / 1000, state, now)
        elif ts_ms < state.last_ts_ms:
            event = Backwards(state.last_ts_ms)
        else:
            late = (now - state.last_arrival) - (ts_ms - state.last_ts_ms) / 1000
            if late > self.lag_threshold_s:
                event = Lag(track, late)
        if payload_bytes != state.last_bytes:  # frames keep one size: compute its duration once
            state.last_bytes = payload_bytes
            state.last_frame_s = payload_bytes / MULAW_RATE
            state.frame_ms = round(payload_bytes / _BYTES_PER_MS)
        state.next_ts_ms = ts_ms + state.frame_ms
        state.last_ts_ms = ts_ms
        state.last_arrival = now
        return event

    def _gap(self, track: Track, lost: float, state: _TrackState, now: float) -> Gap:
        """Fill at most the cap, and at most the wall-clock time the lost audio can have taken: since the
        previous media arrived, less the previous frame's own duration."""
        wall_budget = max(0.0, (now - state.last_arrival) - state.last_frame_s)
        fill = min(lost, self.gap_fill_max_s, wall_budget)
        if fill > lost - 1e-6:  # float noise of an on-time arrival is not worth a count
            return Gap(track, lost, fill)
        reason = "gap_unfilled" if self.gap_fill_max_s <= wall_budget else "gap_beyond_wall_clock"
        return Gap(track, lost, fill, reason)
