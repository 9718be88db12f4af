"""Verdict policy: threshold, K consecutive segments, utterance override, once per leg, updates, reload."""

from __future__ import annotations

import dataclasses

from daemon.config import PolicyConfig
from daemon.model import DeepfakeResult, LegRef, Level
from daemon.policy.verdict import LegVerdictPolicy

LEG = LegRef("CA1", "inbound")


def res(p: float, level: Level = Level.SEGMENT, t: float = 0.0, label: str | None = None) -> DeepfakeResult:
    return DeepfakeResult(LEG, level, t, t + 2, label or ("spoofed" if p >= 0.5 else "bonafide"), p, 7, 1, True, 5.0)


def feed(policy: LegVerdictPolicy, *results: DeepfakeResult) -> list[str]:
    return [d.reason + ("+update" if d.is_update else "") for r in results for d in policy.observe(r)]


def test_two_consecutive_spoofed_segments_alert_once() -> None:
    p = LegVerdictPolicy(PolicyConfig(), LEG)
    assert feed(p, res(0.95, t=0)) == []
    assert feed(p, res(0.97, t=2)) == ["consecutive_segments"]
    assert feed(p, res(0.99, t=4), res(0.99, Level.UTTERANCE)) == []  # at most one alert per leg
    s = p.summary()
    assert s.alerted and s.first_alert_at_s == 4 and s.segments_seen == 3 and s.spoofed_segments == 3
    assert s.max_spoofed_posterior == 0.99 and s.pids == [7] and s.simulated


def test_bonafide_or_low_posterior_resets_the_run() -> None:
    p = LegVerdictPolicy(PolicyConfig(), LEG)
    assert feed(p, res(0.95), res(0.2), res(0.95), res(0.85, label="spoofed"), res(0.95)) == []
    assert p.summary().spoofed_segments == 3 and not p.summary().alerted


def test_label_and_posterior_both_needed() -> None:
    p = LegVerdictPolicy(dataclasses.replace(PolicyConfig(), consecutive_segments=1), LEG)
    assert feed(p, res(0.95, label="bonafide")) == []
    assert feed(p, res(0.95)) == ["consecutive_segments"]


def test_utterance_alerts_at_once_unless_disabled() -> None:
    assert feed(LegVerdictPolicy(PolicyConfig(), LEG), res(0.93, Level.UTTERANCE)) == ["utterance"]
    off = dataclasses.replace(PolicyConfig(), utterance_alerts_immediately=False)
    assert feed(LegVerdictPolicy(off, LEG), res(0.93, Level.UTTERANCE)) == []


def test_utterance_does_not_break_segment_run() -> None:
    p = LegVerdictPolicy(dataclasses.replace(PolicyConfig(), utterance_alerts_immediately=False), LEG)
    assert feed(p, res(0.95), res(0.1, Level.UTTERANCE), res(0.95)) == ["consecutive_segments"]


def test_updates_only_when_configured_and_stronger() -> None:
    p = LegVerdictPolicy(dataclasses.replace(PolicyConfig(), alert_updates=True), LEG)
    assert feed(p, res(0.92), res(0.92)) == ["consecutive_segments"]
    assert feed(p, res(0.91)) == []
    assert feed(p, res(0.99)) == ["consecutive_segments+update"]


def test_reload_changes_threshold_mid_call() -> None:
    p = LegVerdictPolicy(PolicyConfig(), LEG)
    assert feed(p, res(0.8, label="spoofed"), res(0.8, label="spoofed")) == []
    p.update_config(dataclasses.replace(PolicyConfig(), spoofed_threshold=0.7))
    assert feed(p, res(0.8, label="spoofed"), res(0.8, label="spoofed")) == ["consecutive_segments"]
    assert p.summary().mean_spoofed_posterior == 0.8
