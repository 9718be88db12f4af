"""AudioHookServerParser: v2 message sequencing, open/opened, probe, ping, pause, close, stereo audio."""

from __future__ import annotations

import json
from typing import Any

from daemon.ingest.forks.audiohook import (
    PROBE_CONVERSATION_ID,
    AudioHookServerParser,
    choose_media,
    parse_duration,
)
from daemon.ingest.forks.events import (
    Audio,
    CallEnd,
    CallStart,
    Gap,
    MetadataUpdate,
    Pause,
    Problem,
    Reply,
    Resume,
)

SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
ORG = "d7934305-0972-4844-938e-9060eef73d05"
CONV = "090eaa2f-72fa-480a-83e0-8667ff89c0ec"
STEREO = {"type": "audio", "format": "PCMU", "channels": ["external", "internal"], "rate": 8000}
MONO_EXT = {"type": "audio", "format": "PCMU", "channels": ["external"], "rate": 8000}


class Client:
    def __init__(self) -> None:
        self.seq = 0
        self.serverseq = 0

    def msg(self, kind: str, params: dict[str, Any] | None = None, **over: Any) -> str:
        self.seq += 1
        m = {"version": "2", "id": SESSION, "type": kind, "seq": self.seq, "serverseq": self.serverseq,
             "position": "PT0S", "parameters": params or {}}
        m.update(over)
        return json.dumps(m)


def open_params(conv: str = CONV, media: list[Any] | None = None) -> dict[str, Any]:
    return {"organizationId": ORG, "conversationId": conv,
            "participant": {"id": "p1", "ani": "+1555", "aniName": "Ann", "dnis": "+1666"},
            "media": media if media is not None else [STEREO, MONO_EXT], "language": "en-US",
            "customConfig": {"team": "fraud"}}


def reply(ev: Any) -> dict[str, Any]:
    assert isinstance(ev, Reply) and isinstance(ev.payload, str)
    out: dict[str, Any] = json.loads(ev.payload)
    return out


def opened(**kw: Any) -> tuple[AudioHookServerParser, Client]:
    p, c = AudioHookServerParser(session_id=SESSION, **kw), Client()
    events = p.receive_text(c.msg("open", open_params()))
    assert len(events) == 2 and isinstance(events[1], CallStart)
    return p, c


def test_open_chooses_stereo_pcmu_and_starts_the_call() -> None:
    p, c = AudioHookServerParser(session_id=SESSION, organization_id=ORG), Client()
    ev_opened, start = p.receive_text(c.msg("open", open_params()))
    r = reply(ev_opened)
    assert r["type"] == "opened" and r["seq"] == 1 and r["clientseq"] == 1 and r["id"] == SESSION
    assert r["parameters"]["media"] == [STEREO]
    assert isinstance(start, CallStart) and start.call_id == CONV
    assert [leg.name for leg in start.legs] == ["customer", "agent"]
    assert start.metadata["participant.ani"] == "+1555" and start.metadata["custom.team"] == "fraud"
    assert start.metadata["organization_id"] == ORG and start.metadata["language"] == "en-US"


def test_stereo_frames_are_deinterleaved_external_left() -> None:
    p, _ = opened()
    customer, agent = p.receive_binary(bytes([1, 2] * 160))
    assert customer == Audio("customer", bytes([1]) * 160, customer.fmt)
    assert agent == Audio("agent", bytes([2]) * 160, agent.fmt)
    (odd,) = p.receive_binary(b"\x01\x02\x03")
    assert isinstance(odd, Problem) and odd.reason == "misaligned_frame"


def test_channel_order_follows_the_offer_and_mono_is_accepted() -> None:
    assert choose_media([{**STEREO, "channels": ["internal", "external"]}])["channels"] == ["internal", "external"]
    assert choose_media([MONO_EXT]) == MONO_EXT
    assert choose_media([{**STEREO, "format": "L16"}, {**STEREO, "rate": 16000}, "x"]) is None
    p, c = AudioHookServerParser(), Client()
    _, start = p.receive_text(c.msg("open", open_params(media=[{**STEREO, "channels": ["internal", "external"]}])))
    assert isinstance(start, CallStart) and [leg.name for leg in start.legs] == ["agent", "customer"]
    first, _ = p.receive_binary(bytes([7, 9]))
    assert isinstance(first, Audio) and first.leg == "agent" and first.payload == b"\x07"


def test_probe_is_answered_without_a_call() -> None:
    p, c = AudioHookServerParser(session_id=SESSION), Client()
    (ev,) = p.receive_text(c.msg("open", open_params(conv=PROBE_CONVERSATION_ID)))
    assert reply(ev)["type"] == "opened" and p.call is None and p.probe
    assert p.receive_binary(b"\x00\x00") == []
    (ev,) = p.receive_text(c.msg("close", {"reason": "end"}))
    assert reply(ev)["type"] == "closed"
    assert p.connection_closed() == []


def test_ping_pause_resume_discarded_update_close() -> None:
    p, c = opened()
    c.serverseq = 1
    (pong,) = p.receive_text(c.msg("ping", {"rtt": "PT0.05S"}))
    assert reply(pong)["type"] == "pong" and reply(pong)["seq"] == 2 and reply(pong)["clientseq"] == 2
    assert p.receive_text(c.msg("paused")) == [Pause("client paused")]
    assert p.receive_text(c.msg("resumed", {"start": "PT1S", "discarded": "PT0S"})) == [Resume()]
    assert p.receive_text(c.msg("discarded", {"start": "PT2S", "discarded": "PT1.5S"})) == [
        Gap("customer", 1.5), Gap("agent", 1.5)]
    updated, meta = p.receive_text(c.msg("update", {"language": "fr-FR"}))
    assert reply(updated)["type"] == "updated" and meta == MetadataUpdate({"language": "fr-FR"})
    (err,) = p.receive_text(c.msg("error", {"code": 429, "message": "slow down"}))
    assert isinstance(err, Problem) and err.reason == "peer_error" and not err.fatal
    closed, end = p.receive_text(c.msg("close", {"reason": "end"}))
    assert reply(closed)["type"] == "closed" and end == CallEnd("end")
    assert p.receive_text(c.msg("ping")) == [] and p.connection_closed() == []


def fatal_reason(events: list[Any]) -> str:
    assert len(events) == 2 and reply(events[0])["type"] == "disconnect"
    assert reply(events[0])["parameters"]["reason"] in ("error", "unauthorized")
    assert isinstance(events[1], Problem) and events[1].fatal
    return events[1].reason


def test_sequence_violations_disconnect() -> None:
    p, c = opened()
    c.seq += 1  # skip one
    assert fatal_reason(p.receive_text(c.msg("ping"))) == "bad_seq"
    p, c = opened()
    assert fatal_reason(p.receive_text(c.msg("ping", serverseq=5))) == "bad_serverseq"
    p, c = opened()
    assert fatal_reason(p.receive_text(c.msg("ping", id="someone-else"))) == "wrong_session_id"


def test_malformed_and_oversize_messages_disconnect() -> None:
    for text, reason in (("{", "invalid_json"), ('{"version":"1"}', "bad_message"), ("x" * 70000, "oversize"),
                         (json.dumps({"version": "2", "id": SESSION, "type": "ping", "seq": "1"}), "bad_message")):
        p = AudioHookServerParser(session_id=SESSION)
        assert fatal_reason(p.receive_text(text)) == reason


def test_bad_open_and_org_mismatch() -> None:
    p, c = AudioHookServerParser(), Client()
    assert fatal_reason(p.receive_text(c.msg("open", open_params(media=[{**STEREO, "format": "opus"}])))) \
        == "unsupported_media_format"
    p, c = AudioHookServerParser(), Client()
    assert fatal_reason(p.receive_text(c.msg("open", {"organizationId": ORG}))) == "bad_open"
    p, c = AudioHookServerParser(organization_id="other-org"), Client()
    events = p.receive_text(c.msg("open", open_params()))
    assert fatal_reason(events) == "organization_mismatch" and events[1].close_code == 1008
    assert reply(events[0])["parameters"]["reason"] == "unauthorized"


def test_binary_before_open_and_messages_before_open() -> None:
    p, c = AudioHookServerParser(), Client()
    (ev,) = p.receive_binary(b"\x00\x00")
    assert isinstance(ev, Problem) and ev.reason == "audio_before_open" and not ev.fatal
    assert fatal_reason(p.receive_text(c.msg("paused"))) == "before_open"


def test_unknown_type_is_counted_not_fatal() -> None:
    p, c = opened()
    (ev,) = p.receive_text(c.msg("brand-new"))
    assert isinstance(ev, Problem) and ev.reason == "unknown_type" and not ev.fatal


def test_socket_close_without_close_message_ends_the_call() -> None:
    p, _ = opened()
    assert p.connection_closed() == [CallEnd("socket_closed")]


def test_server_disconnect_and_durations() -> None:
    p, _ = opened()
    r = reply(p.disconnect("completed"))
    assert r["type"] == "disconnect" and r["seq"] == 2 and r["parameters"] == {"reason": "completed"}
    assert parse_duration("PT1.5S") == 1.5 and parse_duration("PT1M2S") == 62 and parse_duration("PT1H") == 3600
    assert parse_duration("1.5") is None and parse_duration("PT") is None and parse_duration(3) is None


def test_null_participant_is_a_probe_too() -> None:
    p, c = AudioHookServerParser(), Client()
    params = open_params()
    params["participant"]["id"] = PROBE_CONVERSATION_ID
    (ev,) = p.receive_text(c.msg("open", params))
    assert reply(ev)["type"] == "opened" and p.call is None and p.probe
