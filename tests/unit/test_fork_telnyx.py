"""TelnyxStreamParser: JSON text in, events out; out-of-order media reordered per track."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.ingest.forks.events import Audio, CallEnd, CallStart, Dtmf, Gap, Mark, Problem
from daemon.ingest.forks.telnyx import TelnyxStreamParser, media_format
from daemon.model import AudioFormat, Codec

SID = "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"
CCID = "v3:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ"
PCMU = AudioFormat(Codec.PCMU, 8000)


def start_msg(**over: Any) -> dict[str, Any]:
    start: dict[str, Any] = {"call_control_id": CCID, "call_session_id": "ff55", "from": "+1312", "to": "+1313",
                             "client_state": "aGk=", "tags": ["A", "B"], "custom_parameters": {"tenant": "acme"},
                             "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}
    start.update(over)
    return {"event": "start", "sequence_number": "1", "stream_id": SID, "start": start}


def media(chunk: int, track: str = "inbound", ts: int | None = None, payload: bytes | None = None) -> str:
    body = payload if payload is not None else bytes([chunk % 256]) * 160
    return json.dumps({"event": "media", "sequence_number": str(chunk + 1), "stream_id": SID,
                       "media": {"track": track, "chunk": str(chunk), "timestamp": str(ts if ts is not None
                                                                                       else chunk * 20),
                                 "payload": base64.b64encode(body).decode()}})


def started(**kw: Any) -> TelnyxStreamParser:
    p = TelnyxStreamParser(**kw)
    assert p.receive_text(json.dumps({"event": "connected", "version": "1.0.0"})) == []
    (ev,) = p.receive_text(json.dumps(start_msg()))
    assert isinstance(ev, CallStart)
    return p


def audio_chunks(events: list[Any]) -> list[int]:
    return [e.payload[0] for e in events if isinstance(e, Audio)]


def test_start_identity_metadata_and_legs() -> None:
    p = TelnyxStreamParser()
    (ev,) = p.receive_text(json.dumps(start_msg()))
    assert isinstance(ev, CallStart)
    assert ev.call_id == CCID
    assert ev.metadata == {"stream_id": SID, "call_session_id": "ff55", "from": "+1312", "to": "+1313",
                           "client_state": "aGk=", "tags": "A,B", "param.tenant": "acme"}
    assert [(leg.name, leg.fmt) for leg in ev.legs] == [("inbound", PCMU), ("outbound", PCMU)]


@pytest.mark.parametrize(("fmt", "expected"), [
    ({"encoding": "PCMA", "sample_rate": 8000}, AudioFormat(Codec.PCMA, 8000)),
    ({"encoding": "G722", "sample_rate": 8000}, AudioFormat(Codec.G722, 16000)),
    ({"encoding": "OPUS", "sample_rate": 48000, "channels": 2}, AudioFormat(Codec.OPUS, 48000, 2)),
    ({"encoding": "L16", "sample_rate": "16000"}, AudioFormat(Codec.L16_BE, 16000)),
    ({"encoding": "AMR-WB", "sample_rate": 16000}, None),
    ({"encoding": "PCMU", "sample_rate": 16000}, None),
    ({"encoding": 7}, None),
])
def test_media_formats(fmt: dict[str, Any], expected: AudioFormat | None) -> None:
    assert media_format(fmt) == expected


def test_unsupported_format_is_fatal() -> None:
    p = TelnyxStreamParser()
    (ev,) = p.receive_text(json.dumps(start_msg(media_format={"encoding": "AMR-WB"})))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "unsupported_media_format" and ev.close_code == 1003
    assert p.receive_text(media(1)) == []


def test_out_of_order_frames_come_out_in_order_per_track() -> None:
    p = started(reorder_window=4)
    events: list[Any] = []
    for chunk, track in ((2, "inbound"), (1, "inbound"), (1, "outbound"), (4, "inbound"), (3, "inbound"),
                         (5, "inbound"), (6, "inbound")):
        events += p.receive_text(media(chunk, track))
    events += p.receive_text(json.dumps({"event": "stop", "stream_id": SID}))
    assert [e.payload[0] for e in events if isinstance(e, Audio) and e.leg == "inbound"] == [1, 2, 3, 4, 5, 6]
    assert [e.payload[0] for e in events if isinstance(e, Audio) and e.leg == "outbound"] == [1]
    assert events[-1] == CallEnd("stop")
    assert all(isinstance(e.fmt, AudioFormat) and e.fmt == PCMU for e in events if isinstance(e, Audio))


def test_lost_frames_become_a_gap_and_late_ones_are_counted() -> None:
    p = started(reorder_window=2)
    events: list[Any] = []
    for chunk in (1, 2, 3, 5, 6):
        events += p.receive_text(media(chunk))
    assert audio_chunks(events) == [1, 2, 3, 5, 6]
    gaps = [e for e in events if isinstance(e, Gap)]
    assert gaps == [Gap("inbound", pytest.approx(0.02))]
    (late,) = p.receive_text(media(4))
    assert isinstance(late, Problem) and late.reason == "reorder_late"
    (dup,) = p.receive_text(media(6))
    assert isinstance(dup, Problem) and dup.reason == "reorder_duplicate"
    assert p.drops["reorder_lost"] == 1


def test_dtmf_mark_error_and_close() -> None:
    p = started()
    assert p.receive_text(json.dumps({"event": "dtmf", "stream_id": SID, "dtmf": {"digit": "1"}})) == [
        Dtmf("inbound", "1")]
    assert p.receive_text(json.dumps({"event": "mark", "stream_id": SID, "mark": {"name": "m"}})) == [Mark("m")]
    (err,) = p.receive_text(json.dumps({"event": "error", "payload": {"code": 100002, "title": "x"}}))
    assert isinstance(err, Problem) and err.reason == "peer_error" and not err.fatal
    p.receive_text(media(1))
    events = p.connection_closed()
    assert audio_chunks(events) == [1] and events[-1] == CallEnd("socket_closed")


@pytest.mark.parametrize(("text", "reason"), [
    ("{", "invalid_json"), ("[1]", "not_object"), ('{"x":1}', "missing_event"), ('{"event":"nope"}', "unknown_event"),
])
def test_malformed_messages(text: str, reason: str) -> None:
    p = started()
    (ev,) = p.receive_text(text)
    assert isinstance(ev, Problem) and ev.reason == reason and not ev.fatal


def test_bad_media_fields() -> None:
    p = started()
    cases = [
        ({"event": "media", "stream_id": "other", "media": {}}, "wrong_stream_id"),
        ({"event": "media", "media": {"track": "sideways", "chunk": "1", "payload": "AA=="}}, "unknown_track"),
        ({"event": "media", "media": {"track": "inbound", "chunk": "x", "payload": "AA=="}}, "bad_field"),
        ({"event": "media", "media": {"track": "inbound", "chunk": "1", "payload": "!!"}}, "bad_base64"),
        ({"event": "media", "media": {"track": "inbound", "chunk": "1", "payload": ""}}, "empty_payload"),
        ({"event": "media", "media": {"track": "inbound"}}, "missing_field"),
        ({"event": "media", "media": "x"}, "bad_field"),
        ({"event": "dtmf", "dtmf": {"digit": "Z"}}, "bad_dtmf"),
        (start_msg(), "duplicate_start"),
    ]
    for msg, reason in cases:
        (ev,) = p.receive_text(json.dumps(msg))
        assert isinstance(ev, Problem) and ev.reason == reason, (msg, ev)
    (ev,) = p.receive_binary(b"\x00")
    assert isinstance(ev, Problem) and ev.reason == "binary_frame"


def test_media_before_start_bad_start_and_too_many_errors() -> None:
    p = TelnyxStreamParser(max_problems_before_start=2)
    assert p.receive_text(media(1))[0] == Problem("media_before_start", False, "media")
    (ev,) = TelnyxStreamParser().receive_text(json.dumps({"event": "start", "start": {"from": "x"}}))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "bad_start"
    p.receive_text("{")
    (ev,) = p.receive_text("{")
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "too_many_errors"


def test_oversize_is_fatal() -> None:
    p = TelnyxStreamParser(max_text_chars=100)
    (ev,) = p.receive_text("x" * 101)
    assert isinstance(ev, Problem) and ev.fatal and ev.close_code == 1009


def test_shared_secret_in_custom_parameters() -> None:
    p = TelnyxStreamParser(expected_param=("token", "s3cret"))
    (ev,) = p.receive_text(json.dumps(start_msg(custom_parameters={"token": "nope"})))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "unauthorized" and ev.close_code == 1008
    p = TelnyxStreamParser(expected_param=("token", "s3cret"))
    (ev,) = p.receive_text(json.dumps(start_msg(custom_parameters={"token": "s3cret", "a": "b"})))
    assert isinstance(ev, CallStart) and "param.token" not in ev.metadata and ev.metadata["param.a"] == "b"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=60), st.binary(max_size=20)), max_size=10))
def test_garbage_never_raises(items: list[str | bytes]) -> None:
    p = started()
    for item in items:
        p.receive_binary(item) if isinstance(item, bytes) else p.receive_text(item)
    p.connection_closed()


def test_gap_is_capped() -> None:
    p = started(reorder_window=1, max_gap_s=0.5)
    p.receive_text(media(1))
    events = p.receive_text(media(1000))
    assert [e for e in events if isinstance(e, Gap)] == [Gap("inbound", 0.5)]


@settings(max_examples=100, deadline=None)
@given(window=st.integers(min_value=1, max_value=10), n=st.integers(min_value=1, max_value=60),
       perm=st.randoms(use_true_random=False))
def test_parser_restores_order_for_any_reordering_within_the_window(window: int, n: int, perm: Any) -> None:
    chunks = list(range(1, n + 1))
    arrival: list[int] = []
    for i in range(0, n, window):
        block = chunks[i:i + window]
        perm.shuffle(block)
        arrival += block
    p = started(reorder_window=window)
    events: list[Any] = []
    for chunk in arrival:
        events += p.receive_text(media(chunk))
    events += p.receive_text(json.dumps({"event": "stop"}))
    assert audio_chunks(events) == [c % 256 for c in chunks]
    assert not any(isinstance(e, (Gap, Problem)) for e in events)


def test_streaming_auth_token_in_the_connected_frame() -> None:
    p = TelnyxStreamParser(expected_token="tok")
    (ev,) = p.receive_text(json.dumps(start_msg()))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "unauthorized"
    p = TelnyxStreamParser(expected_token="tok")
    (ev,) = p.receive_text(json.dumps({"event": "connected", "x-telnyx-streaming-auth-token": "bad"}))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "unauthorized" and "bad" not in ev.detail
    p = TelnyxStreamParser(expected_token="tok")
    assert p.receive_text(json.dumps({"event": "connected", "x-telnyx-streaming-auth-token": "tok"})) == []
    assert isinstance(p.receive_text(json.dumps(start_msg()))[0], CallStart)
