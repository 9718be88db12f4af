"""Messages to and from BehavioralStreamingApi, as values (sans-I/O)."""

from __future__ import annotations

import math

from daemon.config import UpstreamCredentials
from daemon.model import UPSTREAM_RATE_HZ, DeepfakeResult, LegRef, Level
from daemon.upstream.pb import api_pb2


def config_message(creds: UpstreamCredentials, level: str = "all") -> api_pb2.AudioStream:
    """The first message of a stream: configuration only (LINEAR_PCM, 16 kHz), no audio."""
    cfg = api_pb2.AudioConfig(encoding=api_pb2.LINEAR_PCM, sample_rate_hertz=UPSTREAM_RATE_HZ)
    if level == "segment":
        cfg.level = api_pb2.segment
    elif level == "utterance":
        cfg.level = api_pb2.utterance
    return api_pb2.AudioStream(cid=creds.cid, x_auth_token=creds.api_key, config=cfg)


def audio_message(creds: UpstreamCredentials, chunk: bytes) -> api_pb2.AudioStream:
    return api_pb2.AudioStream(cid=creds.cid, x_auth_token=creds.api_key, audio_content=chunk)


def map_stream_result(msg: api_pb2.StreamResult, leg: LegRef, offset_s: float, simulated: bool,
                      received_at: float) -> tuple[list[DeepfakeResult], list[str]]:
    """Typed `deepfake` results of one StreamResult, with times moved to leg (call) time by `offset_s`.
    Malformed items are skipped and described in the second list; nothing here raises."""
    results: list[DeepfakeResult] = []
    errors: list[str] = []
    for item in msg.result:
        if item.task != "deepfake":
            continue
        try:
            start = float(item.start_time)
            end = float(item.end_time)
        except ValueError:
            start = end = math.nan
        if not (math.isfinite(start) and math.isfinite(end) and 0.0 <= start <= end):
            # nan/inf/negative/reversed times would poison call time (e.g. an infinite end marks all audio covered)
            errors.append(f"result {item.id!r}: bad times {item.start_time!r}..{item.end_time!r}")
            continue
        spoofed: float | None = None
        for pred in item.prediction:
            if pred.label == "spoofed" and pred.HasField("posterior"):
                try:
                    spoofed = float(pred.posterior)
                except ValueError:
                    spoofed = None
        if spoofed is None:
            bona = [p for p in item.prediction if p.label == "bonafide" and p.HasField("posterior")]
            try:
                spoofed = 1.0 - float(bona[0].posterior) if bona else None
            except ValueError:
                spoofed = None
        if spoofed is None or not 0.0 <= spoofed <= 1.0:
            errors.append(f"result {item.id!r}: no usable spoofed/bonafide posterior")
            continue
        level = Level.UTTERANCE if item.HasField("level") and item.level == api_pb2.utterance else Level.SEGMENT
        label = item.final_label or ("spoofed" if spoofed >= 0.5 else "bonafide")
        results.append(DeepfakeResult(leg=leg, level=level, start_s=start + offset_s, end_s=end + offset_s,
                                      label=label, spoofed_posterior=spoofed, pid=msg.pid,
                                      message_id=msg.message_id, simulated=simulated, received_at=received_at))
    return results, errors
