"""Webhook event bodies (the `data` object), as plain JSON-serialisable values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from daemon import __version__
from daemon.model import CallInfo
from daemon.policy.verdict import AlertDecision, LegSummary
from daemon.timefmt import iso

API = "BehavioralStreamingApi.DeepfakeDetection"
MAX_METADATA_ITEMS = 32
MAX_METADATA_VALUE = 512


def _metadata(info: CallInfo) -> dict[str, str]:
    items = list(info.metadata.items())[:MAX_METADATA_ITEMS]  # keep bodies well under 20 kB
    return {str(k)[:64]: str(v)[:MAX_METADATA_VALUE] for k, v in items}


def spoof_detected_data(call: CallInfo, d: AlertDecision, *, detector_host: str,
                        upstream_target: str) -> dict[str, Any]:
    return {
        "call_id": call.call_id,
        "ingest": call.ingest,
        "leg": d.leg.leg,
        "verdict": "spoofed",
        "posterior": round(d.posterior, 6),
        "threshold": d.threshold,
        "level": d.level.value,
        "reason": d.reason,
        "segment": {"start_s": round(d.start_s, 3), "end_s": round(d.end_s, 3)},
        "consecutive_spoofed_segments": d.consecutive_spoofed,
        "is_update": d.is_update,
        "stream_pid": d.pid,
        "metadata": _metadata(call),
        "simulated": d.simulated,
        "model": {"api": API, "upstream": upstream_target},
        "detector_host": detector_host,
        "detector_version": __version__,
    }


def _leg(s: LegSummary) -> dict[str, Any]:
    return {
        "segments_seen": s.segments_seen,
        "spoofed_segments": s.spoofed_segments,
        "utterances_seen": s.utterances_seen,
        "spoofed_utterances": s.spoofed_utterances,
        "max_spoofed_posterior": round(s.max_spoofed_posterior, 6),
        "mean_spoofed_posterior": round(s.mean_spoofed_posterior, 6),
        "first_alert_at_s": None if s.first_alert_at_s is None else round(s.first_alert_at_s, 3),
        "alerted": s.alerted,
        "stream_pids": list(s.pids),
        "analysed": s.analysed,
        "simulated": s.simulated,
    }


def call_summary_data(call: CallInfo, legs: Mapping[str, LegSummary], *, duration_s: float, started_at: float,
                      ended_at: float, end_reason: str, dtmf: list[str] | None = None) -> dict[str, Any]:
    return {
        "call_id": call.call_id,
        "ingest": call.ingest,
        "started_at": iso(started_at),
        "ended_at": iso(ended_at),
        "duration_s": round(duration_s, 3),
        "end_reason": end_reason,
        "alerted": any(s.alerted for s in legs.values()),
        "legs": {name: _leg(s) for name, s in legs.items()},
        "metadata": _metadata(call),
        "dtmf": "".join(dtmf or [])[:64],
        "simulated": any(s.simulated for s in legs.values()),
        "detector_version": __version__,
    }


def upstream_health_data(*, up: bool, target: str, detail: str, simulated: bool, detector_host: str) -> dict[str, Any]:
    return {"status": "recovered" if up else "degraded", "upstream": target, "detail": detail,
            "simulated": simulated, "detector_host": detector_host, "detector_version": __version__}
