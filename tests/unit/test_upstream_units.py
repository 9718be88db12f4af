"""Result mapping, the circuit breaker and upstream health, as values."""

from __future__ import annotations

from daemon.config import UpstreamCredentials
from daemon.model import LegRef, Level
from daemon.ops.metrics import Metrics
from daemon.upstream.channels import CircuitBreaker
from daemon.upstream.health import UpstreamHealth
from daemon.upstream.pb import api_pb2 as pb
from daemon.upstream.results import audio_message, config_message, map_stream_result

LEG = LegRef("c", "inbound")
CREDS = UpstreamCredentials(7, "key")


def item(**kw: object) -> pb.InferenceResult:
    base: dict[str, object] = {"id": "1", "start_time": "0.000", "end_time": "2.000", "task": "deepfake",
                               "final_label": "spoofed", "level": pb.segment,
                               "prediction": [pb.Prediction(label="spoofed", posterior="0.9700"),
                                              pb.Prediction(label="bonafide", posterior="0.0300")]}
    base.update(kw)
    return pb.InferenceResult(**base)  # type: ignore[arg-type]


def test_messages() -> None:
    cfg = config_message(CREDS, "all")
    assert cfg.HasField("config") and not cfg.audio_content and not cfg.config.HasField("level")
    assert cfg.config.sample_rate_hertz == 16000 and cfg.cid == 7 and cfg.x_auth_token == "key"
    assert config_message(CREDS, "utterance").config.level == pb.utterance
    audio = audio_message(CREDS, b"\x00\x01")
    assert not audio.HasField("config") and audio.cid == 7 and audio.x_auth_token == "key"


def test_mapping_offsets_levels_and_malformed() -> None:
    msg = pb.StreamResult(cid=7, pid=99, message_id=3, result=[
        item(), item(level=pb.utterance, start_time="1.5", end_time="4.25"),
        item(task="emotion"),
        item(prediction=[pb.Prediction(label="bonafide", posterior="0.2")]),
        item(prediction=[pb.Prediction(label="spoofed", posterior="abc")]),
        item(prediction=[pb.Prediction(label="spoofed", posterior="1.5")]),
        item(prediction=[]), item(start_time="x"),
    ])
    results, errors = map_stream_result(msg, LEG, 10.0, True, 5.0)
    assert [(r.level, r.start_s, r.end_s) for r in results[:2]] == [(Level.SEGMENT, 10.0, 12.0),
                                                                   (Level.UTTERANCE, 11.5, 14.25)]
    assert results[0].spoofed_posterior == 0.97 and results[0].pid == 99 and results[0].simulated
    assert results[2].spoofed_posterior == 0.8  # 1 − bonafide when spoofed is absent
    assert len(results) == 3 and len(errors) == 4


def test_breaker() -> None:
    b = CircuitBreaker(failures=2, open_s=5)
    assert b.allow(0)
    b.record_failure(0)
    assert b.allow(0)
    b.record_failure(1)
    assert b.state == "open" and not b.allow(2)
    assert b.allow(6) and b.state == "half_open" and not b.allow(6)  # exactly one trial
    b.record_failure(6)
    assert b.state == "open" and not b.allow(7)
    assert b.allow(11)
    b.record_success()
    assert b.state == "closed" and b.allow(11) and b.allow(11)


def test_health_transitions() -> None:
    m = Metrics()
    h = UpstreamHealth(m, failures_to_degrade=3)
    assert h.observe("retrying", 0) == [] and h.observe("retrying", 1) == []
    assert h.observe("streaming", 2) == []  # a success resets the streak
    for t in range(3):
        changes = h.observe("retrying", t)
    assert [c.up for c in changes] == [False] and m.registry.get_sample_value("spoofwatch_upstream_up") == 0
    assert [c.up for c in h.observe("streaming", 9)] == [True]
    assert [c.up for c in h.observe("auth_failed", 10)] == [False]
