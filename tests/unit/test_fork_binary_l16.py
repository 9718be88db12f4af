"""Binary-L16 websocket forks: Vonage, FreeSWITCH mod_audio_fork/mod_audio_stream, jambonz listen."""

from __future__ import annotations

import json

import numpy as np
import pytest

from daemon.ingest.forks.events import Audio, CallEnd, CallStart, Dtmf, MetadataUpdate, Problem
from daemon.ingest.forks.freeswitch import SUBPROTOCOL, FreeswitchForkParser
from daemon.ingest.forks.jambonz import SUBPROTOCOL as JAMBONZ_SUBPROTOCOL
from daemon.ingest.forks.jambonz import JambonzListenParser
from daemon.ingest.forks.vonage import VonageStreamParser, l16_content_type
from daemon.model import AudioFormat, Codec

FRAME_16K = np.arange(320, dtype="<i2").tobytes()  # 20 ms @ 16 kHz mono
LEFT = np.arange(160, dtype="<i2")
RIGHT = -np.arange(160, dtype="<i2") - 1
STEREO = np.column_stack([LEFT, RIGHT]).astype("<i2").tobytes()


def test_subprotocol_constants() -> None:
    assert SUBPROTOCOL == "audio.drachtio.org" and JAMBONZ_SUBPROTOCOL == "audio.jambonz.org"


# Vonage ----------------------------------------------------------------------------------------
def connected(**extra: object) -> str:
    return json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000", **extra})


def test_vonage_connected_then_binary_mixed() -> None:
    p = VonageStreamParser()
    (start,) = p.receive_text(connected(call_uuid="u-1", tenant="acme"))
    fmt = AudioFormat(Codec.L16_LE, 16000)
    assert start == CallStart("u-1", {"header.call_uuid": "u-1", "header.tenant": "acme"}, start.legs)
    assert [(leg.name, leg.fmt) for leg in start.legs] == [("mixed", fmt)]
    assert p.receive_binary(FRAME_16K) == [Audio("mixed", FRAME_16K, fmt)]
    dtmf = {"event": "websocket:dtmf", "digit": "5", "duration": 260}
    assert p.receive_text(json.dumps(dtmf)) == [Dtmf("mixed", "5")]
    assert p.connection_closed() == [CallEnd("socket_closed")]


def test_vonage_identity_and_formats() -> None:
    (ev,) = VonageStreamParser().receive_text(connected())
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "missing_identity"
    (ev,) = VonageStreamParser(fallback_call_id="from-url").receive_text(connected())
    assert isinstance(ev, CallStart) and ev.call_id == "from-url"
    assert l16_content_type("audio/l16;rate=8000") == AudioFormat(Codec.L16_LE, 8000)
    assert l16_content_type("audio/L16; rate=24000") == AudioFormat(Codec.L16_LE, 24000)
    assert l16_content_type("audio/l16;rate=44100") is None and l16_content_type("audio/pcmu;rate=8000") is None
    (ev,) = VonageStreamParser().receive_text(json.dumps({"event": "websocket:connected", "content-type": 3}))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "unsupported_media_format"


def test_vonage_bad_inputs_and_secret() -> None:
    p = VonageStreamParser()
    (ev,) = p.receive_binary(FRAME_16K)
    assert isinstance(ev, Problem) and ev.reason == "audio_before_start"
    p.receive_text(connected(uuid="u"))
    for data, reason in ((b"\x01", "odd_length"), (b"", "empty_payload")):
        (ev,) = p.receive_binary(data)
        assert isinstance(ev, Problem) and ev.reason == reason
    for text, reason in (("nope", "invalid_json"), ('{"event":"websocket:other"}', "unknown_event"),
                         ('{"event":"websocket:dtmf","digit":"x"}', "bad_dtmf"),
                         (connected(uuid="u"), "duplicate_start")):
        (ev,) = p.receive_text(text)
        assert isinstance(ev, Problem) and ev.reason == reason
    (ev,) = VonageStreamParser(expected_header=("secret", "s")).receive_text(connected(uuid="u", secret="x"))
    assert isinstance(ev, Problem) and ev.reason == "unauthorized"
    (ev,) = VonageStreamParser(expected_header=("secret", "s")).receive_text(connected(uuid="u", secret="s"))
    assert isinstance(ev, CallStart) and "header.secret" not in ev.metadata


# FreeSWITCH ------------------------------------------------------------------------------------
def test_freeswitch_metadata_first_mono() -> None:
    p = FreeswitchForkParser(mix_type="mono", sample_rate=16000)
    (start,) = p.receive_text(json.dumps({"uuid": "fs-1", "caller": "+1"}))
    assert isinstance(start, CallStart) and start.call_id == "fs-1"
    assert start.metadata == {"mix_type": "mono", "uuid": "fs-1", "caller": "+1"}
    assert p.receive_binary(FRAME_16K) == [Audio("caller", FRAME_16K, AudioFormat(Codec.L16_LE, 16000))]
    assert p.receive_text("stop-metadata") == [MetadataUpdate({"metadata": "stop-metadata"})]
    assert p.connection_closed() == [CallEnd("socket_closed")]


def test_freeswitch_metadata_after_audio_is_held_then_released_in_order() -> None:
    p = FreeswitchForkParser(mix_type="stereo", sample_rate=8000)
    assert p.receive_binary(STEREO) == [] and p.receive_binary(STEREO[::-1]) == []
    events = p.receive_text(json.dumps({"callSid": "CA1"}))
    fmt = AudioFormat(Codec.L16_LE, 8000)
    assert isinstance(events[0], CallStart) and [leg.name for leg in events[0].legs] == ["caller", "callee"]
    assert events[1:3] == [Audio("caller", LEFT.tobytes(), fmt), Audio("callee", RIGHT.tobytes(), fmt)]
    assert len(events) == 5


def test_freeswitch_hold_is_bounded_and_no_identity_fails_at_close() -> None:
    p = FreeswitchForkParser(mix_type="stereo", sample_rate=8000, max_pending_bytes=1000)
    problems = [e for i in range(5) for e in p.receive_binary(bytes([i]) * 320)]
    assert [e.reason for e in problems if isinstance(e, Problem)] == ["pending_overflow", "pending_overflow"]
    assert p.drops["pending_overflow"] == 2 and p.pending.held_bytes == 960
    q = FreeswitchForkParser(mix_type="stereo", sample_rate=8000, max_pending_bytes=1000)
    for i in range(5):
        q.receive_binary(bytes([i]) * 320)
    events = q.receive_text('{"uuid": "u"}')
    # whole stereo frames were dropped: the released legs stay paired, oldest first
    assert [(e.leg, e.payload[0]) for e in events if isinstance(e, Audio)] == [
        ("caller", 2), ("callee", 2), ("caller", 3), ("callee", 3), ("caller", 4), ("callee", 4)]
    (ev,) = p.connection_closed()
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "missing_identity"


def test_freeswitch_url_identity_starts_at_once_and_late_metadata_updates() -> None:
    p = FreeswitchForkParser(mix_type="mono", sample_rate=8000, call_id="from-url")
    start, audio = p.receive_binary(b"\x01\x00" * 160)
    assert isinstance(start, CallStart) and start.call_id == "from-url" and isinstance(audio, Audio)
    assert p.receive_text('{"a": 1}') == [MetadataUpdate({"a": "1"})]
    (ev,) = p.receive_binary(b"\x00" * 3)
    assert isinstance(ev, Problem) and ev.reason == "misaligned_frame"


def test_freeswitch_metadata_without_identity_and_secret() -> None:
    (ev,) = FreeswitchForkParser(mix_type="mono", sample_rate=8000).receive_text('{"no": "id"}')
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "missing_identity"
    p = FreeswitchForkParser(mix_type="mono", sample_rate=8000, call_id="u", expected_key=("token", "s"))
    assert p.receive_binary(b"\x00\x00") == []  # held until the secret is seen
    (ev,) = FreeswitchForkParser(mix_type="mono", sample_rate=8000, call_id="u",
                                 expected_key=("token", "s")).receive_text('{"token": "bad"}')
    assert isinstance(ev, Problem) and ev.reason == "unauthorized"
    start, _ = p.receive_text('{"token": "s"}')
    assert isinstance(start, CallStart) and "token" not in start.metadata
    with pytest.raises(ValueError):
        FreeswitchForkParser(mix_type="mono", sample_rate=11025)


# jambonz ---------------------------------------------------------------------------------------
def jambonz_hello(**over: object) -> str:
    # jambonz merges the verb's metadata into the top level (Object.assign({sampleRate, mixType}, callInfo, metadata))
    msg = {"sampleRate": 16000, "mixType": "stereo", "callSid": "js-1", "from": "+1", "to": "+2",
           "direction": "inbound", "customerData": {"crm": 7}, "team": "fraud"}
    msg.update(over)
    return json.dumps(msg)


def test_jambonz_stereo_flow() -> None:
    p = JambonzListenParser()
    (start,) = p.receive_text(jambonz_hello())
    assert isinstance(start, CallStart) and start.call_id == "js-1"
    assert start.metadata == {"mix_type": "stereo", "from": "+1", "to": "+2", "direction": "inbound",
                              "customerData": '{"crm":7}', "team": "fraud"}
    fmt = AudioFormat(Codec.L16_LE, 16000)
    assert p.receive_binary(STEREO) == [Audio("caller", LEFT.tobytes(), fmt), Audio("callee", RIGHT.tobytes(), fmt)]
    assert p.receive_text('{"event":"dtmf","dtmf":"7","duration":"1600"}') == [Dtmf("caller", "7")]
    (ev,) = p.receive_binary(STEREO[:6])
    assert isinstance(ev, Problem) and ev.reason == "misaligned_frame"
    assert p.connection_closed() == [CallEnd("socket_closed")]


@pytest.mark.parametrize(("over", "reason"), [
    ({"sampleRate": 7999}, "unsupported_media_format"), ({"sampleRate": 64001}, "unsupported_media_format"),
    ({"mixType": "quad"}, "unsupported_media_format"), ({"callSid": None}, "bad_start"),
])
def test_jambonz_bad_hello(over: dict[str, object], reason: str) -> None:
    (ev,) = JambonzListenParser().receive_text(jambonz_hello(**over))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == reason


def test_jambonz_audio_before_hello_and_garbage_hello() -> None:
    p = JambonzListenParser()
    (ev,) = p.receive_binary(FRAME_16K)
    assert isinstance(ev, Problem) and ev.reason == "audio_before_start" and not ev.fatal
    (ev,) = p.receive_text("not json")
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "bad_start"
    q = JambonzListenParser()
    (start,) = q.receive_text(jambonz_hello(mixType="mono", sampleRate=8000))
    assert [leg.name for leg in start.legs] == ["caller"]
    (ev,) = q.receive_text('{"event":"other"}')
    assert isinstance(ev, Problem) and ev.reason == "unknown_event"
    (ev,) = JambonzListenParser(expected_meta=("token", "s")).receive_text(jambonz_hello())
    assert isinstance(ev, Problem) and ev.reason == "unauthorized"
    (ev,) = JambonzListenParser(expected_meta=("token", "s")).receive_text(jambonz_hello(token="s"))
    assert isinstance(ev, CallStart) and "token" not in ev.metadata
