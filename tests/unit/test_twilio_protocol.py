"""TwilioStreamParser: bytes in, events out, for every message type and every bad input."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from daemon.ingest.twilio.protocol import (
    Connected,
    Dtmf,
    Gap,
    Lag,
    Mark,
    Media,
    MediaFormat,
    Problem,
    Started,
    Stopped,
    TwilioStreamParser,
)

SID = "MZ0123456789abcdef"
CALL = "CA0123456789abcdef"
FRAME = bytes(range(160))


def start_msg(**over: Any) -> dict[str, Any]:
    start: dict[str, Any] = {
        "streamSid": SID,
        "accountSid": "AC1",
        "callSid": CALL,
        "tracks": ["inbound", "outbound"],
        "customParameters": {"tenant": "acme", "n": 3},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    start.update(over)
    return {"event": "start", "sequenceNumber": "1", "streamSid": SID, "start": start}


def media_msg(track: str = "inbound", chunk: int | str = 1, ts: int | str = 0, payload: bytes = FRAME,
              sid: str | None = SID, b64: str | None = None) -> dict[str, Any]:
    msg: dict[str, Any] = {"event": "media", "sequenceNumber": "2", "media": {
        "track": track, "chunk": str(chunk), "timestamp": str(ts),
        "payload": base64.b64encode(payload).decode() if b64 is None else b64}}
    if sid is not None:
        msg["streamSid"] = sid
    return msg


def feed(p: TwilioStreamParser, msg: Any, now: float = 0.0) -> list[Any]:
    return p.receive_text(json.dumps(msg), now)


def started_parser(**kw: Any) -> TwilioStreamParser:
    p = TwilioStreamParser(**kw)
    assert isinstance(feed(p, start_msg())[0], Started)
    return p


def only_problem(events: list[Any]) -> Problem:
    assert len(events) == 1 and isinstance(events[0], Problem), events
    return events[0]


def test_connected() -> None:
    p = TwilioStreamParser()
    assert feed(p, {"event": "connected", "protocol": "Call", "version": "1.0.0"}) == [Connected("Call", "1.0.0")]


def test_start_fields() -> None:
    p = TwilioStreamParser()
    (ev,) = feed(p, start_msg())
    assert ev == Started(CALL, SID, "AC1", ("inbound", "outbound"), {"tenant": "acme", "n": "3"},
                         MediaFormat("audio/x-mulaw", 8000, 1))
    assert p.started == ev


def test_start_accepts_string_rate_and_missing_media_format() -> None:
    p = TwilioStreamParser()
    fmt = {"encoding": "audio/x-mulaw", "sampleRate": "8000", "channels": "1"}
    assert isinstance(feed(p, start_msg(mediaFormat=fmt))[0], Started)
    msg = start_msg()
    del msg["start"]["mediaFormat"]
    assert isinstance(feed(TwilioStreamParser(), msg)[0], Started)


def test_media_both_tracks() -> None:
    p = started_parser()
    assert feed(p, media_msg("inbound", 1, 0)) == [Media("inbound", 1, 0, FRAME)]
    assert feed(p, media_msg("outbound", 1, 0, payload=b"\x7f" * 160)) == [Media("outbound", 1, 0, b"\x7f" * 160)]
    assert feed(p, media_msg("inbound", 2, 20)) == [Media("inbound", 2, 20, FRAME)]


def test_media_without_stream_sid_is_accepted() -> None:
    p = started_parser()
    assert isinstance(feed(p, media_msg(sid=None))[0], Media)


def test_dtmf_mark_stop() -> None:
    p = started_parser()
    assert feed(p, {"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track", "digit": "5"}}) == [
        Dtmf("inbound", "5")]
    assert feed(p, {"event": "mark", "streamSid": SID, "mark": {"name": "x"}}) == [Mark("x")]
    assert feed(p, {"event": "stop", "streamSid": SID, "stop": {"accountSid": "AC1", "callSid": CALL}}) == [Stopped()]
    assert only_problem(feed(p, media_msg())).reason == "after_stop"


def test_gap_when_timestamp_jumps() -> None:
    p = started_parser(gap_fill_max_s=2.0)
    feed(p, media_msg(ts=0), now=0.0)
    # 20 ms frame ends at 20; the next starts at 520 → 500 ms lost
    events = feed(p, media_msg(chunk=2, ts=520), now=0.52)
    assert events == [Gap("inbound", 0.5, pytest.approx(0.5)), Media("inbound", 2, 520, FRAME)]


def test_gap_fill_is_capped() -> None:
    p = started_parser(gap_fill_max_s=1.0)
    feed(p, media_msg(ts=0))
    gap = feed(p, media_msg(chunk=2, ts=5020), now=5.0)[0]
    assert gap == Gap("inbound", 5.0, 1.0, "gap_unfilled")


def test_gap_fill_never_exceeds_the_wall_clock_time_since_the_previous_media() -> None:
    p = started_parser(gap_fill_max_s=2.0)
    feed(p, media_msg(ts=0), now=100.0)
    # 1 s of timestamps skipped, but only 100 ms passed: 100 ms less the previous 20 ms frame can be filled
    gap = feed(p, media_msg(chunk=2, ts=1020), now=100.1)[0]
    assert isinstance(gap, Gap) and gap.seconds == pytest.approx(1.0)
    assert gap.fill_seconds == pytest.approx(0.08) and gap.unfilled_reason == "gap_beyond_wall_clock"
    # a burst right after: no wall-clock time passed, nothing is filled
    gap = feed(p, media_msg(chunk=3, ts=2040), now=100.1)[0]
    assert gap == Gap("inbound", 1.0, 0.0, "gap_beyond_wall_clock")


def test_timestamps_jumping_ahead_cannot_push_more_than_real_time_audio() -> None:
    """A sender at real-time pace whose timestamps jump 1 s per frame: before, every frame brought 1 s of
    silence (50x real time); now leg audio never exceeds the wall-clock time that passed."""
    p = started_parser(gap_fill_max_s=2.0)
    frames, audio_s, unfilled = 500, 0.0, 0
    for i in range(frames):
        now = 50.0 + i * 0.02
        for ev in feed(p, media_msg(chunk=i + 1, ts=i * 1000), now=now):
            if isinstance(ev, Gap):
                audio_s += ev.fill_seconds
                unfilled += ev.unfilled_reason == "gap_beyond_wall_clock"
            elif isinstance(ev, Media):
                audio_s += len(ev.payload) / 8000
    wall_s = (frames - 1) * 0.02 + 0.02  # from the first frame's arrival to the end of the last frame
    assert audio_s <= wall_s + 1e-6
    assert unfilled == frames - 1


def test_an_on_time_gap_is_filled_whole() -> None:
    p = started_parser(gap_fill_max_s=2.0)
    feed(p, media_msg(ts=0), now=7.0)
    # 300 ms lost; the next frame arrives when it should (previous 20 ms + 300 ms later)
    gap = feed(p, media_msg(chunk=2, ts=320), now=7.32)[0]
    assert isinstance(gap, Gap) and gap.unfilled_reason == ""
    assert gap.fill_seconds == pytest.approx(0.3)


def test_gaps_are_per_track() -> None:
    p = started_parser()
    feed(p, media_msg("inbound", 1, 0))
    feed(p, media_msg("outbound", 1, 0))
    assert feed(p, media_msg("outbound", 2, 20)) == [Media("outbound", 2, 20, FRAME)]
    assert isinstance(feed(p, media_msg("inbound", 2, 100))[0], Gap)


def test_small_timestamp_jitter_is_not_a_gap() -> None:
    p = started_parser()
    feed(p, media_msg(ts=0))
    assert feed(p, media_msg(chunk=2, ts=27)) == [Media("inbound", 2, 27, FRAME)]


def test_lag_when_arrival_gaps_but_timestamps_continuous() -> None:
    p = started_parser(lag_threshold_s=0.25)
    feed(p, media_msg(ts=0), now=10.0)
    events = feed(p, media_msg(chunk=2, ts=20), now=11.02)
    assert len(events) == 2 and isinstance(events[0], Lag) and events[0].track == "inbound"
    assert events[0].seconds == pytest.approx(1.0)
    # a burst catching up is not lag
    assert feed(p, media_msg(chunk=3, ts=40), now=11.021) == [Media("inbound", 3, 40, FRAME)]


def test_gap_wins_over_lag() -> None:
    p = started_parser()
    feed(p, media_msg(ts=0), now=0.0)
    events = feed(p, media_msg(chunk=2, ts=1020), now=1.02)
    assert [type(e) for e in events] == [Gap, Media]


def test_timestamp_backwards_counted_audio_kept() -> None:
    p = started_parser()
    feed(p, media_msg(ts=100))
    events = feed(p, media_msg(chunk=2, ts=40))
    assert isinstance(events[0], Problem) and events[0].reason == "timestamp_backwards" and not events[0].fatal
    assert isinstance(events[1], Media)


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        ("{nope", "invalid_json"),
        ("[1, 2]", "not_object"),
        ('"str"', "not_object"),
        ('{"foo": 1}', "missing_event"),
        ('{"event": 3}', "missing_event"),
        ('{"event": "clear"}', "unknown_event"),
        ("[" * 100000 + "]" * 100000, "oversize"),
    ],
)
def test_bad_messages_never_raise(msg: str, reason: str) -> None:
    p = started_parser(max_message_chars=65536)
    problem = only_problem(p.receive_text(msg, 0.0))
    assert problem.reason == reason
    assert problem.fatal == (reason == "oversize")


def test_bytes_are_parsed_like_text_and_invalid_utf8_is_invalid_json() -> None:
    """The websocket route hands over a TEXT frame's raw bytes (its UTF-8 is not checked before)."""
    p = started_parser()
    events = p.receive_text(json.dumps(media_msg(ts=0)).encode(), 0.0)
    assert isinstance(events[0], Media) and events[0].payload == FRAME
    bad_in_string = json.dumps(media_msg(chunk=2, ts=20)).encode().replace(b'"inbound"', b'"in\xffbound"')
    assert only_problem(p.receive_text(bad_in_string, 0.02)).reason == "invalid_json"
    assert only_problem(p.receive_text(b"\xfe\xff{}", 0.02)).reason == "invalid_json"
    assert isinstance(p.receive_text(json.dumps(media_msg(chunk=2, ts=20)).encode(), 0.02)[0], Media)


def test_deep_nesting_is_invalid_json_not_a_crash() -> None:
    p = started_parser(max_message_chars=10**7)
    assert only_problem(p.receive_text("[" * 200000 + "]" * 200000, 0.0)).reason == "invalid_json"


def test_binary_frame_dropped() -> None:
    p = started_parser()
    problem = only_problem(p.receive_binary(b"\x00\x01"))
    assert problem == Problem("binary_frame", False, "2 bytes")
    assert isinstance(feed(p, media_msg())[0], Media)


def test_media_before_start() -> None:
    p = TwilioStreamParser()
    assert only_problem(feed(p, media_msg())).reason == "media_before_start"
    assert only_problem(feed(p, {"event": "stop"})).reason == "stop_before_start"


def test_duplicate_start_dropped_first_kept() -> None:
    p = started_parser()
    problem = only_problem(feed(p, start_msg(callSid="CAother", streamSid="MZother")))
    assert problem.reason == "duplicate_start" and not problem.fatal
    assert p.started is not None and p.started.call_sid == CALL


@pytest.mark.parametrize(
    ("msg", "reason"),
    [
        (media_msg(sid="MZelse"), "wrong_stream_sid"),
        (media_msg(b64="!!!notbase64"), "bad_base64"),
        (media_msg(b64="QUJ"), "bad_base64"),  # bad padding
        (media_msg(b64=""), "empty_payload"),
        (media_msg(track="both"), "unknown_track"),
        (media_msg(chunk="x"), "bad_field"),
        (media_msg(chunk="１２"), "bad_field"),  # digits, but not ASCII ones
        (media_msg(b64="QUJD\u00e9"), "bad_base64"),  # not ASCII
        ({"event": "media", "streamSid": SID, "media": {"track": ["inbound"], "chunk": "1", "timestamp": "0",
                                                        "payload": "AA=="}}, "unknown_track"),  # unhashable
        ({"event": "media", "streamSid": SID, "media": {"track": {"a": 1}, "chunk": "1", "timestamp": "0",
                                                        "payload": "AA=="}}, "unknown_track"),
        ({"event": "media", "streamSid": SID, "media": {"track": "inbound", "chunk": True, "timestamp": "0",
                                                        "payload": "AA=="}}, "bad_field"),
        ({"event": "media", "streamSid": SID, "media": {"track": "inbound", "chunk": "1", "timestamp": 1.5,
                                                        "payload": "AA=="}}, "bad_field"),
        ({"event": "media", "streamSid": SID, "media": {"track": "inbound", "chunk": "1", "timestamp": "0",
                                                        "payload": 12}}, "missing_field"),
        (media_msg(ts="-5"), "bad_field"),
        ({"event": "media", "streamSid": SID}, "missing_field"),
        ({"event": "media", "streamSid": SID, "media": {"track": "inbound", "chunk": "1", "timestamp": "0"}},
         "missing_field"),
        ({"event": "media", "streamSid": SID, "media": {"track": "inbound", "chunk": "1", "payload": "AA=="}},
         "missing_field"),
        ({"event": "dtmf", "streamSid": SID, "dtmf": {"track": "inbound_track", "digit": "x"}}, "bad_dtmf"),
        ({"event": "dtmf", "streamSid": SID, "dtmf": {"track": "sideways", "digit": "1"}}, "unknown_track"),
        ({"event": "dtmf", "streamSid": SID}, "missing_field"),
        ({"event": "mark", "streamSid": SID, "mark": {}}, "missing_field"),
    ],
)
def test_bad_media_dropped_stream_goes_on(msg: dict[str, Any], reason: str) -> None:
    p = started_parser()
    problem = only_problem(feed(p, msg))
    assert problem.reason == reason and not problem.fatal
    assert feed(p, media_msg()) == [Media("inbound", 1, 0, FRAME)]


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1}},
         "unsupported_media_format"),
        ({"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2}},
         "unsupported_media_format"),
        ({"mediaFormat": "mulaw"}, "unsupported_media_format"),
        ({"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": "fast"}}, "unsupported_media_format"),
        ({"callSid": None}, "bad_start"),
        ({"streamSid": ""}, "bad_start"),
        ({"tracks": "inbound"}, "bad_start"),
        ({"customParameters": ["a"]}, "bad_start"),
    ],
)
def test_fatal_start_problems(over: dict[str, Any], reason: str) -> None:
    p = TwilioStreamParser()
    msg = start_msg(**over)
    if over.get("streamSid") == "":
        msg["streamSid"] = ""
    problem = only_problem(feed(p, msg))
    assert problem.reason == reason and problem.fatal
    assert reason != "unsupported_media_format" or "audio/x-mulaw 8000 Hz mono" in problem.detail or \
        "malformed" in problem.detail
    # a failed parser returns nothing more
    assert feed(p, media_msg()) == []
    assert p.receive_binary(b"x") == []


def test_start_without_start_object_is_fatal() -> None:
    problem = only_problem(feed(TwilioStreamParser(), {"event": "start", "streamSid": SID}))
    assert problem == Problem("bad_start", True, "no 'start' object")


def test_too_many_errors_before_start_is_fatal() -> None:
    p = TwilioStreamParser(max_problems_before_start=3)
    for _ in range(3):
        assert not only_problem(p.receive_text("junk", 0.0)).fatal
    assert only_problem(p.receive_text("junk", 0.0)).reason == "too_many_errors"
    assert p.failed


def test_errors_after_start_are_never_fatal() -> None:
    p = started_parser(max_problems_before_start=1)
    for _ in range(10):
        assert not only_problem(p.receive_text("junk", 0.0)).fatal


# the typed fast path (msgspec) and the general path (json.loads) give the same events ------------------
def general_only(p: TwilioStreamParser) -> TwilioStreamParser:
    p._fast_media = lambda text, now: None  # type: ignore[method-assign]
    return p


def test_well_formed_media_takes_the_fast_path() -> None:
    p = started_parser()
    assert p._fast_media(json.dumps(media_msg()), 0.0) == [Media("inbound", 1, 0, FRAME)]
    # anything else is left to the general path, which gives the exact reason
    assert p._fast_media(json.dumps(media_msg(b64="!!!!")), 0.0) is None
    assert p._fast_media(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "x"}}), 0.0) is None


_ODD_VALUES: list[Any] = ["", "12", "-3", "1.5", "٣", "1" * 16, 7, -1, True, None, [], {}, "inbound", "outbound_track"]
_B64S = [base64.b64encode(FRAME).decode(), "", "AAA", "AA==", "A===", "AA=A", "AB\nC", "AB C", "****", "QQ", "QUJD",
         "QUJD\u00e9", base64.urlsafe_b64encode(b"\xfb\xff" * 3).decode()]


@pytest.mark.parametrize("seed", range(3))
def test_fast_and_general_paths_agree_on_any_media_message(seed: int) -> None:
    """Media messages with every field in turn missing, mistyped or odd: the parser with its fast path
    and one with the general path only return the same events (drop reasons, audio, timing)."""
    import random

    rng = random.Random(seed)
    fast, slow = started_parser(), general_only(started_parser())
    for n in range(400):
        msg: dict[str, Any] = media_msg(chunk=n + 1, ts=20 * n + rng.choice([0, 0, 0, 15, 500, -40]),
                                       b64=rng.choice(_B64S) if rng.random() < 0.5 else None)
        roll = rng.random()
        if roll < 0.15:
            key = rng.choice(["track", "chunk", "timestamp", "payload"])
            if rng.random() < 0.3:
                del msg["media"][key]
            else:
                msg["media"][key] = rng.choice(_ODD_VALUES)
        elif roll < 0.2:
            msg["streamSid"] = rng.choice([None, "MZother", 5, SID])
        elif roll < 0.25:
            msg["media"] = rng.choice([None, [], "x", {}])
        elif roll < 0.3:
            msg["event"] = rng.choice(["mark", "dtmf", "MEDIA", 3])
        text = json.dumps(msg)
        if rng.random() < 0.05:
            text = text[: rng.randrange(len(text))]  # truncated: invalid JSON on both paths
        now = n * 0.02 + rng.choice([0.0, 0.0, 0.3])
        assert fast.receive_text(text, now) == slow.receive_text(text, now), text
    stop = json.dumps({"event": "stop", "streamSid": SID})
    assert fast.receive_text(stop, 9.0) == slow.receive_text(stop, 9.0) == [Stopped()]
    after = json.dumps(media_msg())
    assert only_problem(fast.receive_text(after, 9.1)) == only_problem(slow.receive_text(after, 9.1))


def test_duplicate_keys_mean_the_same_on_both_paths() -> None:
    """json.loads keeps the last of duplicate keys: the fast path must not read a message otherwise."""
    body = json.dumps(media_msg())[1:-1]
    for text in ['{' + body + ', "event": "stop"}', '{"event": "stop", ' + body + '}',
                 '{' + body + ', "streamSid": "MZother"}', '{' + body + ', "media": {"track": "inbound"}}']:
        fast, slow = started_parser(), general_only(started_parser())
        assert fast.receive_text(text, 0.0) == slow.receive_text(text, 0.0), text
