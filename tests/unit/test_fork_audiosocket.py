"""AudioSocket TLV stream parser: byte stream in (any TCP split), events out."""

from __future__ import annotations

import itertools
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.ingest.forks.audiosocket import AudioSocketParser, frame
from daemon.ingest.forks.events import Audio, CallEnd, CallStart, Dtmf, Problem
from daemon.model import AudioFormat, Codec

UID = uuid.UUID("0436430c-2b02-624c-2032-570501212b57")
SLIN = bytes(range(256)) + bytes(64)  # 320 B = 20 ms at 8 kHz


def stream() -> bytes:
    return (frame(0x01, UID.bytes) + frame(0x10, SLIN) + frame(0x03, b"5") + frame(0x12, SLIN * 2)
            + frame(0x10, SLIN) + frame(0x00))


EXPECTED = [
    CallStart(str(UID), {}, ()),  # legs compared separately
    Audio("channel", SLIN, AudioFormat(Codec.L16_LE, 8000)),
    Dtmf("channel", "5"),
    Audio("channel", SLIN * 2, AudioFormat(Codec.L16_LE, 16000)),
    Audio("channel", SLIN, AudioFormat(Codec.L16_LE, 8000)),
    CallEnd("hangup"),
]


def normalise(events: list[object]) -> list[object]:
    return [CallStart(e.call_id, e.metadata, ()) if isinstance(e, CallStart) else e for e in events]


def test_whole_stream() -> None:
    p = AudioSocketParser()
    events = p.receive_data(stream())
    assert normalise(events) == EXPECTED
    start = events[0]
    assert isinstance(start, CallStart) and start.legs[0].name == "channel"
    assert p.receive_data(frame(0x10, SLIN)) == []  # after hangup: ignored
    assert p.connection_closed() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(stream())), max_size=30))
def test_any_split_of_the_byte_stream_gives_the_same_events(cuts: list[int]) -> None:
    data = stream()
    bounds = [0, *sorted(cuts), len(data)]
    p = AudioSocketParser()
    events: list[object] = []
    for a, b in itertools.pairwise(bounds):
        events += p.receive_data(data[a:b])
    assert normalise(events) == EXPECTED


def test_rate_kinds_and_overrides() -> None:
    p = AudioSocketParser()
    p.receive_data(frame(0x01, UID.bytes))
    rates = {}
    for kind in range(0x10, 0x19):
        (ev,) = p.receive_data(frame(kind, b"\x00\x00"))
        assert isinstance(ev, Audio)
        rates[kind] = ev.fmt.sample_rate
    assert rates == {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100,
                     0x16: 48000, 0x17: 96000, 0x18: 192000}
    old = AudioSocketParser(rate_0x10_hz=16000, kind_0x11_is_slin16=True)
    old.receive_data(frame(0x01, UID.bytes))
    a, b = old.receive_data(frame(0x10, b"\0\0") + frame(0x11, b"\0\0"))
    assert isinstance(a, Audio) and isinstance(b, Audio)
    assert (a.fmt.sample_rate, b.fmt.sample_rate) == (16000, 16000)


def test_oversize_frame_is_fatal_and_counted() -> None:
    p = AudioSocketParser(max_payload_bytes=1000)
    p.receive_data(frame(0x01, UID.bytes))
    (ev,) = p.receive_data(b"\x10\x03\xe9")  # declares 1001 bytes: fatal before the payload arrives
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "oversize_frame"
    assert p.drops["oversize_frame"] == 1
    assert p.receive_data(frame(0x10, SLIN)) == [] and p.connection_closed() == []


def test_bad_inputs_are_counted_drops() -> None:
    p = AudioSocketParser()
    assert [e.reason for e in p.receive_data(frame(0x10, SLIN)) if isinstance(e, Problem)] == ["audio_before_uuid"]
    p.receive_data(frame(0x01, UID.bytes))
    for data, reason in ((frame(0x01, UID.bytes), "duplicate_uuid"), (frame(0x10, b"\0\0\0"), "odd_length"),
                         (frame(0x10), "empty_payload"), (frame(0x03, b"x"), "bad_dtmf"),
                         (frame(0x03, b"12"), "bad_dtmf"), (frame(0x42, b"zz"), "unknown_kind"),
                         (frame(0xFF, b"\x02"), "peer_error")):
        (ev,) = p.receive_data(data)
        assert isinstance(ev, Problem) and not ev.fatal and ev.reason == reason, (data, ev)
    assert not p.done


def test_bad_uuid_is_fatal_and_error_hangup_ends() -> None:
    p = AudioSocketParser()
    (ev,) = p.receive_data(frame(0x01, b"short"))
    assert isinstance(ev, Problem) and ev.fatal and ev.reason == "bad_uuid"
    q = AudioSocketParser()
    q.receive_data(frame(0x01, UID.bytes))
    events = q.receive_data(frame(0xFF, b"\x01"))
    assert [type(e) for e in events] == [Problem, CallEnd] and events[-1] == CallEnd("peer_hangup")


def test_socket_close_ends_the_call_and_counts_a_truncated_frame() -> None:
    p = AudioSocketParser()
    p.receive_data(frame(0x01, UID.bytes) + frame(0x10, SLIN)[:100])
    events = p.connection_closed()
    assert events[-1] == CallEnd("socket_closed")
    assert p.drops["truncated_frame"] == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_never_raises(data: bytes) -> None:
    p = AudioSocketParser(max_payload_bytes=64)
    p.receive_data(data)
    p.connection_closed()
