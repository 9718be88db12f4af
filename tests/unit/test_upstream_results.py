"""Messages to and from BehavioralStreamingApi as values: the config message, audio messages, and the
mapping of StreamResult items to typed DeepfakeResults (call time, levels, posteriors, malformed items)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import UpstreamCredentials
from daemon.model import DeepfakeResult, LegRef, Level
from daemon.upstream.pb import api_pb2 as pb
from daemon.upstream.results import audio_message, config_message, map_stream_result

LEG = LegRef("call-1", "inbound")
CREDS = UpstreamCredentials(4242, "secret-key")


def pred(label: str, posterior: str | None = None) -> pb.Prediction:
    p = pb.Prediction(label=label)
    if posterior is not None:
        p.posterior = posterior
    return p


def item(**kw: object) -> pb.InferenceResult:
    base: dict[str, object] = {"id": "r1", "start_time": "0.000", "end_time": "2.000", "task": "deepfake",
                               "final_label": "spoofed", "level": pb.segment,
                               "prediction": [pred("spoofed", "0.9700"), pred("bonafide", "0.0300")]}
    base.update(kw)
    return pb.InferenceResult(**base)  # type: ignore[arg-type]


def mapped(*items: pb.InferenceResult, offset: float = 0.0) -> tuple[list[DeepfakeResult], list[str]]:
    msg = pb.StreamResult(cid=4242, pid=77, message_id=5, result=list(items))
    return map_stream_result(msg, LEG, offset, False, 123.0)


# config and audio messages ----------------------------------------------------------------------

@pytest.mark.parametrize(("level", "expected"), [("all", None), ("segment", pb.segment),
                                                 ("utterance", pb.utterance)])
def test_config_message_is_config_only(level: str, expected: int | None) -> None:
    msg = config_message(CREDS, level)
    wire = pb.AudioStream.FromString(msg.SerializeToString())  # what the server parses
    assert wire.cid == 4242 and wire.x_auth_token == "secret-key"
    assert wire.HasField("config") and wire.audio_content == b""
    assert wire.config.encoding == pb.LINEAR_PCM and wire.config.sample_rate_hertz == 16000
    if expected is None:
        assert not wire.config.HasField("level")  # "all": no filter asked for
    else:
        # segment is enum value 0: it only survives the wire because the field is `optional` and set
        assert wire.config.HasField("level") and wire.config.level == expected
    assert not wire.config.HasField("logits") and not wire.config.HasField("feature_embedding")


def test_config_message_default_level_is_all() -> None:
    assert not config_message(CREDS).config.HasField("level")


def test_audio_message_carries_credentials_and_exact_bytes() -> None:
    chunk = bytes(range(256)) * 31 + b"\x00\x01"
    wire = pb.AudioStream.FromString(audio_message(CREDS, chunk).SerializeToString())
    assert wire.audio_content == chunk
    assert not wire.HasField("config")
    assert wire.cid == 4242 and wire.x_auth_token == "secret-key"


# result mapping ---------------------------------------------------------------------------------

def test_only_deepfake_items_are_mapped() -> None:
    results, errors = mapped(item(task="emotion", id="e"), item(id="d"), item(task="", id="x"),
                             item(task="Deepfake", id="cap"))
    assert [r.message_id for r in results] == [5] and len(results) == 1
    assert errors == []  # other tasks are not errors, just not ours


def test_offset_moves_stream_time_to_call_time() -> None:
    results, errors = mapped(item(start_time="0.500", end_time="2.520"),
                             item(level=pb.utterance, start_time="1.5", end_time="4.25"), offset=10.0)
    assert errors == []
    assert [(r.start_s, r.end_s) for r in results] == [pytest.approx((10.5, 12.52)), (11.5, 14.25)]
    results0, _ = mapped(item(start_time="0.500", end_time="2.520"))
    assert (results0[0].start_s, results0[0].end_s) == (0.5, 2.52)


def test_fields_are_carried_through() -> None:
    msg = pb.StreamResult(cid=4242, pid=987654, message_id=12, result=[item()])
    (r,), errors = map_stream_result(msg, LEG, 3.0, True, 55.5)
    assert errors == []
    assert r.leg == LEG and r.pid == 987654 and r.message_id == 12 and r.simulated is True
    assert r.received_at == 55.5 and r.label == "spoofed" and r.spoofed_posterior == pytest.approx(0.97)


def test_level_mapping() -> None:
    no_level = item()
    no_level.ClearField("level")
    results, errors = mapped(item(level=pb.segment), item(level=pb.utterance), no_level)
    assert errors == []
    assert [r.level for r in results] == [Level.SEGMENT, Level.UTTERANCE, Level.SEGMENT]


def test_posterior_from_spoofed_or_one_minus_bonafide() -> None:
    results, errors = mapped(
        item(prediction=[pred("bonafide", "0.9000"), pred("spoofed", "0.1000")], final_label="bonafide"),
        item(prediction=[pred("bonafide", "0.2000")], final_label=""),  # spoofed absent
        item(prediction=[pred("bonafide", "0.9500")], final_label=""),
        item(prediction=[pred("spoofed"), pred("bonafide", "0.3000")]),  # spoofed without a posterior
        item(prediction=[pred("spoofed", "n/a"), pred("bonafide", "0.4000")]),  # spoofed unusable
    )
    assert errors == []
    assert [r.spoofed_posterior for r in results] == pytest.approx([0.1, 0.8, 0.05, 0.7, 0.6])
    # final_label wins when given; otherwise the posterior decides at 0.5
    assert [r.label for r in results] == ["bonafide", "spoofed", "bonafide", "spoofed", "spoofed"]


def test_posterior_bounds_are_inclusive() -> None:
    results, errors = mapped(item(prediction=[pred("spoofed", "1")]), item(prediction=[pred("spoofed", "0")]),
                             item(prediction=[pred("bonafide", "1.0")]))
    assert errors == [] and [r.spoofed_posterior for r in results] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("bad", [
    {"prediction": [pred("spoofed", "abc")]},
    {"prediction": [pred("spoofed", "abc"), pred("bonafide", "xyz")]},
    {"prediction": []},
    {"prediction": [pred("spoofed"), pred("bonafide")]},  # labels without posteriors
    {"prediction": [pred("other", "0.5")]},
    {"prediction": [pred("spoofed", "1.5")]},
    {"prediction": [pred("spoofed", "-0.1")]},
    {"prediction": [pred("bonafide", "1.2")]},  # 1 − 1.2 < 0
    {"prediction": [pred("spoofed", "nan")]},
    {"start_time": "x"},
    {"end_time": ""},
    {"start_time": "nan"},
    {"end_time": "inf"},
    {"start_time": "-1.0"},
    {"start_time": "3.0", "end_time": "2.0"},  # ends before it starts
], ids=lambda d: repr(d)[:60])
def test_malformed_items_are_skipped_with_an_error(bad: dict[str, object]) -> None:
    results, errors = mapped(item(id="good-1"), item(id="bad", **bad), item(id="good-2", start_time="2.0",
                                                                            end_time="4.0"))
    assert len(results) == 2 and [(r.start_s, r.end_s) for r in results] == [(0.0, 2.0), (2.0, 4.0)]
    assert len(errors) == 1 and "'bad'" in errors[0]


def test_empty_message() -> None:
    assert mapped() == ([], [])


text = st.one_of(st.text(max_size=8), st.sampled_from(["0", "1", "0.5", "1.5", "-1", "nan", "inf", "-inf",
                                                        "1e400", " 0.3 ", "0x1", "2.000", ""]))


@st.composite
def inference_items(draw: st.DrawFn) -> pb.InferenceResult:
    preds = []
    for _ in range(draw(st.integers(0, 3))):
        p = pb.Prediction(label=draw(st.sampled_from(["spoofed", "bonafide", "other", ""])))
        if draw(st.booleans()):
            p.posterior = draw(text)
        preds.append(p)
    r = pb.InferenceResult(id=draw(st.text(max_size=4)), start_time=draw(text), end_time=draw(text),
                           task=draw(st.sampled_from(["deepfake", "emotion"])), prediction=preds,
                           final_label=draw(st.sampled_from(["", "spoofed", "bonafide"])))
    if draw(st.booleans()):
        r.level = draw(st.sampled_from([pb.segment, pb.utterance]))
    return r


@settings(max_examples=300, deadline=None)
@given(st.lists(inference_items(), max_size=5), st.floats(0, 1e5))
def test_mapping_never_raises_and_accounts_for_every_item(items: list[pb.InferenceResult], offset: float) -> None:
    results, errors = mapped(*items, offset=offset)
    assert len(results) + len(errors) == sum(1 for i in items if i.task == "deepfake")
    for r in results:
        assert 0.0 <= r.spoofed_posterior <= 1.0
        assert math.isfinite(r.start_s) and math.isfinite(r.end_s) and offset <= r.start_s <= r.end_s
