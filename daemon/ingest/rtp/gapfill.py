"""How much silence a leg may insert for an RTP timestamp gap (sans-I/O, clock passed in).

A timestamp gap says how much audio the sender *claims* is missing; the sender controls it. Filled
blindly, a sender whose timestamps keep jumping makes us push many times real-time audio into the
resampler and upstream. So a leg's media (audio delivered + silence filled) may never run ahead of
the wall-clock time since its first packet arrived by more than `slack_s` (which absorbs arrival
jitter and bursts, e.g. the batch a tick releases). Real loss is always behind the wall clock, so
it is filled in full; what the budget refuses is counted (`refused_s`) and the audio goes on.
"""

from __future__ import annotations

#: media may run this far ahead of the wall clock (arrival jitter, burst release at a tick)
GAP_FILL_SLACK_S = 0.2


class GapFillBudget:
    __slots__ = ("filled_s", "media_s", "refused_s", "slack_s", "started_at")

    def __init__(self, slack_s: float = GAP_FILL_SLACK_S) -> None:
        self.slack_s = slack_s
        self.started_at: float | None = None
        self.media_s = 0.0  # audio delivered + silence filled
        self.filled_s = 0.0
        self.refused_s = 0.0

    def begin(self, now: float) -> None:
        """The leg's first packet arrived (its media is measured from here)."""
        if self.started_at is None:
            self.started_at = now

    def audio(self, seconds: float) -> None:
        """`seconds` of received audio were delivered."""
        self.media_s += seconds

    def fill(self, gap_s: float, now: float, next_audio_s: float = 0.0) -> float:
        """Seconds of silence to insert for a gap of `gap_s` found at `now`, before the `next_audio_s`
        of audio that follows it (that audio has arrived, so it too was produced before `now`)."""
        if gap_s <= 0:
            return 0.0
        if self.started_at is None:
            self.started_at = now
        room = (now - self.started_at) + self.slack_s - self.media_s - next_audio_s
        allowed = min(gap_s, max(0.0, room))
        self.media_s += allowed
        self.filled_s += allowed
        self.refused_s += gap_s - allowed
        return allowed
