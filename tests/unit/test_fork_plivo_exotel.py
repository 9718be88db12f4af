"""Plivo <Stream> and Exotel AgentStream parsers: JSON text in, events out."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from daemon.ingest.forks.events import Audio, CallEnd, CallStart, Dtmf, Mark, Problem
from daemon.ingest.forks.exotel import ExotelStreamParser
from daemon.ingest.forks.plivo import PlivoStreamParser, content_format
from daemon.model import AudioFormat, Codec

PCM = bytes(range(200)) * 2  # 400 B


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# Plivo -----------------------------------------------------------------------------------------
def plivo_start(**over: Any) -> dict[str, Any]:
    start: dict[str, Any] = {"callId": "c-1", "streamId": "s-1", "accountId": "MA1", "tracks": ["inbound", "outbound"],
                             "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000}}
    start.update(over)
    return {"event": "start", "sequenceNumber": 0, "start": start, "extra_headers": "tenant=acme;token=t0k"}


def plivo_media(track: str = "inbound", payload: bytes = PCM) -> str:
    return json.dumps({"event": "media", "sequenceNumber": 1, "streamId": "s-1",
                       "media": {"track": track, "timestamp": "1", "chunk": 1, "payload": b64(payload)},
                       "extra_headers": "{}"})


def test_plivo_start_media_dtmf_and_close_ends() -> None:
    p = PlivoStreamParser()
    (start,) = p.receive_text(json.dumps(plivo_start()))
    assert isinstance(start, CallStart) and start.call_id == "c-1"
    assert start.metadata == {"stream_id": "s-1", "account_id": "MA1", "header.tenant": "acme", "header.token": "t0k"}
    fmt = AudioFormat(Codec.L16_LE, 16000)
    assert [(leg.name, leg.fmt) for leg in start.legs] == [("inbound", fmt), ("outbound", fmt)]
    assert p.receive_text(plivo_media("outbound")) == [Audio("outbound", PCM, fmt)]
    dtmf = {"event": "dtmf", "streamId": "s-1", "dtmf": {"track": "inbound", "digit": "#", "timestamp": "1"}}
    assert p.receive_text(json.dumps(dtmf)) == [Dtmf("inbound", "#")]
    assert p.receive_text(json.dumps({"event": "playedStream", "name": "x"})) == []
    # no stop: the socket closing is the end of the call
    assert p.connection_closed() == [CallEnd("socket_closed")]
    assert p.connection_closed() == []


@pytest.mark.parametrize(("encoding", "rate", "expected"), [
    ("audio/x-l16", 8000, AudioFormat(Codec.L16_LE, 8000)),
    ("audio/x-l16;rate=16000", None, AudioFormat(Codec.L16_LE, 16000)),
    ("audio/x-mulaw", 8000, AudioFormat(Codec.PCMU, 8000)),
    ("audio/x-mulaw;rate=16000", None, None),
    ("audio/x-l16", 44100, None),
    ("audio/x-l16;rate=abc", None, None),
    ("audio/ogg", 8000, None),
])
def test_plivo_content_types(encoding: str, rate: int | None, expected: AudioFormat | None) -> None:
    assert content_format(encoding, rate) == expected


def test_plivo_bad_inputs() -> None:
    p = PlivoStreamParser()
    (ev,) = p.receive_text(plivo_media())
    assert isinstance(ev, Problem) and ev.reason == "media_before_start"
    bad = plivo_start()
    bad["extra_headers"] = "{not json"
    for good in ('{"tenant": "acme"}', {"tenant": "acme"}, "tenant=acme,x=1"):
        ok = plivo_start()
        ok["extra_headers"] = good
        (ev,) = PlivoStreamParser().receive_text(json.dumps(ok))
        assert isinstance(ev, CallStart) and ev.metadata["header.tenant"] == "acme"
    start, problem = p.receive_text(json.dumps(bad))
    assert isinstance(start, CallStart) and isinstance(problem, Problem) and problem.reason == "bad_extra_headers"
    for text, reason in ((plivo_media(payload=b"\x00\x01\x02"), "odd_length"),
                         (plivo_media(track="both"), "unknown_track"),
                         (json.dumps({"event": "media", "streamId": "s-2", "media": {}}), "wrong_stream_id"),
                         (json.dumps({"event": "media", "media": {"payload": "%%%"}}), "bad_base64"),
                         ("[]", "not_object")):
        (ev,) = p.receive_text(text)
        assert isinstance(ev, Problem) and ev.reason == reason and not ev.fatal, (text, ev)
    (ev,) = PlivoStreamParser().receive_text(json.dumps(plivo_start(mediaFormat={"encoding": "audio/x-alaw"})))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "unsupported_media_format"


def test_plivo_shared_secret_in_extra_headers() -> None:
    (ev,) = PlivoStreamParser(expected_header=("token", "other")).receive_text(json.dumps(plivo_start()))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "unauthorized"
    (ev,) = PlivoStreamParser(expected_header=("token", "t0k")).receive_text(json.dumps(plivo_start()))
    assert isinstance(ev, CallStart) and "header.token" not in ev.metadata


# Exotel ----------------------------------------------------------------------------------------
def exotel_start(rate: Any = "8000", **over: Any) -> dict[str, Any]:
    start: dict[str, Any] = {"stream_sid": "MZ1", "call_sid": "CA1", "account_sid": "AC1", "from": "+91",
                             "to": "+92", "custom_parameters": {"k": "v"},
                             "media_format": {"encoding": "audio/x-raw", "sample_rate": rate, "bit_rate": "16"}}
    start.update(over)
    return {"event": "start", "sequence_number": "1", "stream_sid": "MZ1", "start": start}


def exotel_media(payload: bytes = PCM) -> str:
    return json.dumps({"event": "media", "sequence_number": "3", "stream_sid": "MZ1",
                       "media": {"chunk": "2", "timestamp": "200", "payload": b64(payload)}})


def test_exotel_flow() -> None:
    p = ExotelStreamParser()
    assert p.receive_text(json.dumps({"event": "connected"})) == []
    (start,) = p.receive_text(json.dumps(exotel_start()))
    assert isinstance(start, CallStart) and start.call_id == "CA1"
    assert start.metadata == {"stream_sid": "MZ1", "account_sid": "AC1", "from": "+91", "to": "+92", "param.k": "v"}
    fmt = AudioFormat(Codec.L16_LE, 8000)
    assert p.receive_text(exotel_media()) == [Audio("inbound", PCM, fmt)]
    assert p.receive_text(json.dumps({"event": "dtmf", "stream_sid": "MZ1", "dtmf": {"digit": "5", "duration": "100"}})
                          ) == [Dtmf("inbound", "5")]
    assert p.receive_text(json.dumps({"event": "mark", "stream_sid": "MZ1", "mark": {"name": "m1"}})) == [Mark("m1")]
    assert p.receive_text(json.dumps({"event": "stop", "stream_sid": "MZ1"})) == [CallEnd("stop")]
    assert p.connection_closed() == []


@pytest.mark.parametrize(("rate", "ok"), [("8000", True), ("16000", True), (16000, True), ("44100", False),
                                          ("8k", False), (None, True)])
def test_exotel_sample_rate_is_a_string(rate: Any, ok: bool) -> None:
    msg = exotel_start(rate)
    if rate is None:
        del msg["start"]["media_format"]["sample_rate"]
    (ev,) = ExotelStreamParser().receive_text(json.dumps(msg))
    assert isinstance(ev, CallStart) is ok
    if not ok:
        assert isinstance(ev, Problem) and ev.fatal and ev.reason == "unsupported_media_format"


def test_exotel_bad_inputs() -> None:
    p = ExotelStreamParser()
    (ev,) = p.receive_text(exotel_media())
    assert isinstance(ev, Problem) and ev.reason == "media_before_start"
    p.receive_text(json.dumps(exotel_start()))
    for text, reason in ((exotel_media(b"\x01"), "odd_length"),
                         ('{"event":"media","stream_sid":"MZ9"}', "wrong_stream_sid"),
                         ('{"event":"clear"}', "unknown_event"), ('{"event":"media","media":{}}', "missing_field")):
        (ev,) = p.receive_text(text)
        assert isinstance(ev, Problem) and ev.reason == reason, (text, ev)
    (ev,) = p.receive_binary(b"\x00")
    assert isinstance(ev, Problem) and ev.reason == "binary_frame"
    (ev,) = ExotelStreamParser().receive_text(json.dumps({"event": "start", "start": {"call_sid": 5}}))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "bad_start"


def test_exotel_mulaw_stream() -> None:
    msg = exotel_start()
    msg["start"]["media_format"] = {"encoding": "audio/x-mulaw;rate=8000", "sample_rate": "8000"}
    p = ExotelStreamParser()
    (start,) = p.receive_text(json.dumps(msg))
    assert isinstance(start, CallStart) and start.legs[0].fmt == AudioFormat(Codec.PCMU, 8000)
    assert p.receive_text(exotel_media(b"\x01")) == [Audio("inbound", b"\x01", AudioFormat(Codec.PCMU, 8000))]
