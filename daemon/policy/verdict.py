"""The verdict policy (sans-I/O): a leg's `deepfake` results in, alert decisions out.

A result counts as spoofed when its final label is "spoofed" AND its spoofed posterior is at least
`spoofed_threshold` (both: a service-side label alone, or a posterior alone, is not enough).
- K = `consecutive_segments` consecutive spoofed segment results raise an alert; a bonafide (or
  below-threshold) segment resets the run; utterance results do not break a segment run.
- With `utterance_alerts_immediately`, one spoofed utterance result raises an alert at once.
- At most one `call.spoof_detected` per leg per call; with `alert_updates`, later evidence with a
  higher posterior than the last alert is sent again as an update (is_update=True).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.config import PolicyConfig
from daemon.model import DeepfakeResult, LegRef, Level


@dataclass(frozen=True)
class AlertDecision:
    leg: LegRef
    posterior: float
    threshold: float
    level: Level
    start_s: float
    end_s: float
    consecutive_spoofed: int
    reason: str  # "consecutive_segments" | "utterance"
    is_update: bool
    pid: int
    simulated: bool
    result_received_at: float


@dataclass
class LegSummary:
    segments_seen: int = 0
    spoofed_segments: int = 0
    utterances_seen: int = 0
    spoofed_utterances: int = 0
    max_spoofed_posterior: float = 0.0
    mean_spoofed_posterior: float = 0.0
    first_alert_at_s: float | None = None
    alerted: bool = False
    pids: list[int] = field(default_factory=list)
    simulated: bool = False
    analysed: bool = True


class LegVerdictPolicy:
    def __init__(self, cfg: PolicyConfig, leg: LegRef) -> None:
        self.cfg = cfg
        self.leg = leg
        self._run = 0
        self._segment_posterior_sum = 0.0
        self._summary = LegSummary()
        self._last_alert_posterior: float | None = None

    def update_config(self, cfg: PolicyConfig) -> None:
        """SIGHUP: a new threshold applies to results from now on."""
        self.cfg = cfg

    def _is_spoofed(self, r: DeepfakeResult) -> bool:
        return r.label == "spoofed" and r.spoofed_posterior >= self.cfg.spoofed_threshold

    def observe(self, r: DeepfakeResult) -> list[AlertDecision]:
        s = self._summary
        s.simulated = s.simulated or r.simulated
        if r.pid and r.pid not in s.pids:
            s.pids.append(r.pid)
        s.max_spoofed_posterior = max(s.max_spoofed_posterior, r.spoofed_posterior)
        spoofed = self._is_spoofed(r)
        reason: str | None = None
        if r.level is Level.SEGMENT:
            s.segments_seen += 1
            self._segment_posterior_sum += r.spoofed_posterior
            s.mean_spoofed_posterior = self._segment_posterior_sum / s.segments_seen
            if spoofed:
                s.spoofed_segments += 1
                self._run += 1
                if self._run >= self.cfg.consecutive_segments:
                    reason = "consecutive_segments"
            else:
                self._run = 0
        else:
            s.utterances_seen += 1
            if spoofed:
                s.spoofed_utterances += 1
                if self.cfg.utterance_alerts_immediately:
                    reason = "utterance"
        if reason is None:
            return []
        if s.alerted:
            last = self._last_alert_posterior or 0.0
            if not (self.cfg.alert_updates and r.spoofed_posterior > last):
                return []
        decision = AlertDecision(
            leg=self.leg, posterior=r.spoofed_posterior, threshold=self.cfg.spoofed_threshold, level=r.level,
            start_s=r.start_s, end_s=r.end_s, consecutive_spoofed=self._run, reason=reason, is_update=s.alerted,
            pid=r.pid, simulated=r.simulated, result_received_at=r.received_at,
        )
        if not s.alerted:
            s.alerted = True
            s.first_alert_at_s = r.end_s
        self._last_alert_posterior = r.spoofed_posterior
        return [decision]

    def summary(self) -> LegSummary:
        return self._summary
