"""Asterisk chan_websocket: MEDIA_START (JSON or plain text), binary media, DTMF_END, held audio."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.ingest.forks.asterisk_ws import AsteriskWebsocketParser, channel_format, parse_control
from daemon.ingest.forks.audiohook import AudioHookServerParser
from daemon.ingest.forks.events import Audio, CallEnd, CallStart, Dtmf, Problem
from daemon.ingest.forks.exotel import ExotelStreamParser
from daemon.ingest.forks.freeswitch import FreeswitchForkParser
from daemon.ingest.forks.jambonz import JambonzListenParser
from daemon.ingest.forks.plivo import PlivoStreamParser
from daemon.ingest.forks.vonage import VonageStreamParser
from daemon.model import AudioFormat, Codec

ULAW = bytes(range(160))
MEDIA_START = {"event": "MEDIA_START", "connection_id": "c-1", "channel": "WebSocket/app-0001", "channel_id": "ch-1",
               "format": "ulaw", "optimal_frame_size": 160, "ptime": 20,
               "channel_variables": {"CALLERID": "+1555", "TENANT": "acme"}}


def test_json_media_start_then_audio_and_dtmf() -> None:
    p = AsteriskWebsocketParser()
    (start,) = p.receive_text(json.dumps(MEDIA_START))
    assert isinstance(start, CallStart) and start.call_id == "ch-1"
    assert start.metadata == {"channel": "WebSocket/app-0001", "connection_id": "c-1", "format": "ulaw", "ptime": "20",
                              "optimal_frame_size": "160", "var.CALLERID": "+1555", "var.TENANT": "acme"}
    fmt = AudioFormat(Codec.PCMU, 8000)
    assert p.receive_binary(ULAW) == [Audio("channel", ULAW, fmt)]
    assert p.receive_text('{"event":"DTMF_END","digit":"9"}') == [Dtmf("channel", "9")]
    assert p.receive_text('{"event":"MEDIA_XOFF"}') == []
    assert p.connection_closed() == [CallEnd("socket_closed")]


def test_plain_text_media_start() -> None:
    p = AsteriskWebsocketParser()
    (start,) = p.receive_text("MEDIA_START connection_id:c-2 channel:WebSocket/x channel_id:ch-2 format:slin16 "
                              "optimal_frame_size:640 ptime:20")
    assert isinstance(start, CallStart) and start.call_id == "ch-2" and start.legs[0].fmt == AudioFormat(
        Codec.L16_LE, 16000)
    assert p.receive_text("DTMF_END digit:#") == [Dtmf("channel", "#")]
    assert parse_control("QUEUE_DRAINED") == {"event": "QUEUE_DRAINED"}


def test_audio_before_media_start_is_held_and_bounded() -> None:
    p = AsteriskWebsocketParser(max_pending_bytes=400)
    assert p.receive_binary(b"\x01" * 160) == [] and p.receive_binary(b"\x02" * 160) == []
    (over,) = p.receive_binary(b"\x03" * 160)
    assert isinstance(over, Problem) and over.reason == "pending_overflow"
    events = p.receive_text(json.dumps(MEDIA_START))
    assert isinstance(events[0], CallStart)
    assert [e.payload[0] for e in events[1:] if isinstance(e, Audio)] == [2, 3]
    assert all(e.fmt == AudioFormat(Codec.PCMU, 8000) for e in events[1:] if isinstance(e, Audio))
    q = AsteriskWebsocketParser()
    q.receive_binary(b"\x00" * 10)
    (ev,) = q.connection_closed()
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "missing_identity"


@pytest.mark.parametrize(("name", "expected"), [
    ("ulaw", AudioFormat(Codec.PCMU, 8000)), ("alaw", AudioFormat(Codec.PCMA, 8000)),
    ("slin", AudioFormat(Codec.L16_LE, 8000)), ("slin44", AudioFormat(Codec.L16_LE, 44100)),
    ("slin192", AudioFormat(Codec.L16_LE, 192000)), ("g722", AudioFormat(Codec.G722, 16000)),
    ("opus", None), ("slin7", None), (None, None),
])
def test_channel_formats(name: str | None, expected: AudioFormat | None) -> None:
    assert channel_format(name) == expected


def test_bad_inputs() -> None:
    p = AsteriskWebsocketParser()
    for text, reason in (("{bad", "invalid_json"), ('{"x":1}', "missing_event"), ("", "missing_event"),
                         ("DTMF_END digit:1", "dtmf_before_start"), ("SOMETHING_NEW", "unknown_event")):
        (ev,) = p.receive_text(text)
        assert isinstance(ev, Problem) and ev.reason == reason and not ev.fatal, (text, ev)
    (ev,) = AsteriskWebsocketParser().receive_text(json.dumps({**MEDIA_START, "format": "opus"}))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "unsupported_media_format"
    (ev,) = AsteriskWebsocketParser().receive_text('{"event":"MEDIA_START","format":"ulaw"}')
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "bad_start"
    s = AsteriskWebsocketParser()
    s.receive_text(json.dumps({**MEDIA_START, "format": "slin"}))
    (ev,) = s.receive_binary(b"\x00" * 3)
    assert isinstance(ev, Problem) and ev.reason == "odd_length"
    (ev,) = s.receive_text(json.dumps(MEDIA_START))
    assert isinstance(ev, Problem) and ev.reason == "duplicate_start"
    (ev,) = AsteriskWebsocketParser(expected_variable=("TOKEN", "s")).receive_text(json.dumps(MEDIA_START))
    assert isinstance(ev, Problem) and ev.reason == "unauthorized"


PARSERS = (
    lambda: AsteriskWebsocketParser(max_pending_bytes=100),
    lambda: AudioHookServerParser(),
    lambda: ExotelStreamParser(),
    lambda: FreeswitchForkParser(mix_type="stereo", sample_rate=8000, max_pending_bytes=100),
    lambda: JambonzListenParser(),
    lambda: PlivoStreamParser(),
    lambda: VonageStreamParser(fallback_call_id="x"),
)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=len(PARSERS) - 1),
       st.lists(st.one_of(st.text(max_size=80), st.binary(max_size=24),
                          st.sampled_from(['{"event":"start"}', '{"callSid":"a","mixType":"stereo"}',
                                           "MEDIA_START channel_id:a format:slin", '{"uuid":"u"}',
                                           '{"event":"websocket:connected","content-type":"audio/l16;rate=8000"}'])),
                max_size=12))
def test_no_parser_raises_on_garbage(which: int, items: list[str | bytes]) -> None:
    p = PARSERS[which]()
    for item in items:
        events = p.receive_binary(item) if isinstance(item, bytes) else p.receive_text(item)
        assert isinstance(events, list)
    p.connection_closed()
    assert p.connection_closed() == []
