"""The media-fork loadgen's frame builders, round-tripped through the SERVER's parsers
(daemon.ingest.forks): each dialect's frames must give a CallStart with the expected id and legs,
audio bytes equal to the clip's (padded to whole frames with silence), DTMF, and a CallEnd."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from daemon.audio.codecs import encode_alaw, encode_ulaw
from daemon.ingest.forks.asterisk_ws import AsteriskWebsocketParser
from daemon.ingest.forks.audiosocket import AudioSocketParser
from daemon.ingest.forks.events import Audio, CallEnd, CallStart, Dtmf, Gap, Problem
from daemon.ingest.forks.exotel import ExotelStreamParser
from daemon.ingest.forks.freeswitch import FreeswitchForkParser
from daemon.ingest.forks.jambonz import JambonzListenParser
from daemon.ingest.forks.plivo import PlivoStreamParser
from daemon.ingest.forks.telnyx import TelnyxStreamParser
from daemon.ingest.forks.vonage import VonageStreamParser
from daemon.loadgen.forks import PLACEHOLDER, TemplateTicks
from daemon.loadgen.forks_frames import Exotel, ForkDialect, Frame, Plivo, Telnyx, Vonage, mix, reorder_order
from daemon.loadgen.forks_frames_pbx import AsteriskWs, AudioSocket, FreeSwitch, Jambonz
from daemon.loadgen.forks_socket import wire


def tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 9000).astype(np.int16)


def padded(x: np.ndarray, frame: int) -> np.ndarray:
    n = -(-len(x) // frame) * frame
    return np.concatenate([x, np.zeros(n - len(x), dtype=np.int16)])


def be16(x: np.ndarray) -> bytes:
    return x.astype(">i2").tobytes()


def le16(x: np.ndarray) -> bytes:
    return x.astype("<i2").tobytes()


def feed(parser: Any, frames: list[Frame], *, close: bool) -> list[Any]:
    events: list[Any] = []
    for f in frames:
        events += parser.receive_text(f) if isinstance(f, str) else parser.receive_binary(f)
    if close:
        events += parser.connection_closed()
    return events


def check_call(events: list[Any], dialect: ForkDialect, key: str, legs: tuple[str, ...], end: str) -> dict[str, bytes]:
    assert not [e for e in events if isinstance(e, Problem | Gap)], [e for e in events if isinstance(e, Problem)]
    starts = [e for e in events if isinstance(e, CallStart)]
    assert len(starts) == 1 and starts[0].call_id == dialect.call_id(key)
    assert tuple(leg.name for leg in starts[0].legs) == legs
    assert isinstance(events[-1], CallEnd) and events[-1].reason == end
    assert not [e for e in events[:-1] if isinstance(e, CallEnd)]
    audio: dict[str, bytes] = {}
    for e in events:
        if isinstance(e, Audio):
            audio[e.leg] = audio.get(e.leg, b"") + e.payload
    return audio


KEY = str(uuid.uuid4())


@pytest.mark.parametrize(("codec", "rate"), [("PCMU", 8000), ("PCMA", 8000), ("L16", 16000)])
def test_telnyx_round_trip_out_of_order(codec: str, rate: int) -> None:
    a, b = tone(440, 0.51, rate), tone(1000, 0.3, rate)
    d = Telnyx({"inbound": a, "outbound": b}, codec=codec, rate=rate, reorder=6, auth_token="tok",
               params={"case": "rt"}, dtmf="12")
    assert d.handshake(KEY).headers == {"x-telnyx-streaming-auth-token": "tok"}
    script = d.script(KEY)
    chunks = [int(m.split('"chunk":"')[1].split('"')[0]) for m in script if isinstance(m, str) and '"media"' in m]
    assert chunks != sorted(chunks), "frames must go out of order"
    p = TelnyxStreamParser(reorder_window=8, expected_token="tok")
    events = feed(p, script, close=False)
    got = check_call(events, d, KEY, ("inbound", "outbound"), "stop")
    assert events[0].metadata["param.case"] == "rt" and events[0].metadata["stream_id"] == KEY
    enc: Callable[[np.ndarray], bytes] = {"PCMU": encode_ulaw, "PCMA": encode_alaw, "L16": be16}[codec]
    fs = rate // 50
    n = len(padded(a, fs))
    assert got["inbound"] == enc(padded(a, fs))
    assert got["outbound"] == enc(np.concatenate([b, np.zeros(n - len(b), dtype=np.int16)]))
    assert [e.digit for e in events if isinstance(e, Dtmf)] == ["1", "2"]


def test_reorder_order_stays_within_blocks() -> None:
    order = reorder_order(103, 5, random.Random(1))
    assert sorted(order) == list(range(103)) and order != list(range(103))
    assert all(set(order[i : i + 5]) == set(range(i, min(i + 5, 103))) for i in range(0, 103, 5))
    assert reorder_order(10, 1, random.Random(1)) == list(range(10))


@pytest.mark.parametrize(("codec", "rate"), [("mulaw", 8000), ("l16", 8000), ("l16", 16000)])
def test_plivo_round_trip_ends_on_close_only(codec: str, rate: int) -> None:
    a, b = tone(440, 0.33, rate), tone(700, 0.33, rate)
    d = Plivo({"inbound": a, "outbound": b}, codec=codec, rate=rate, params={"userId": "42", "s": "x"}, dtmf="5")
    script = d.script(KEY)
    assert d.closing(KEY) == []  # Plivo sends no stop
    p = PlivoStreamParser()
    assert not [e for e in feed(p, script, close=False) if isinstance(e, CallEnd)]
    events = feed(PlivoStreamParser(), script, close=True)
    got = check_call(events, d, KEY, ("inbound", "outbound"), "socket_closed")
    assert events[0].metadata["header.userId"] == "42"
    enc = encode_ulaw if codec == "mulaw" else le16
    assert got["inbound"] == enc(padded(a, rate // 50)) and got["outbound"] == enc(padded(b, rate // 50))
    assert [e.digit for e in events if isinstance(e, Dtmf)] == ["5"]


@pytest.mark.parametrize("rate", [8000, 16000, 24000])
def test_exotel_round_trip_100ms_chunks(rate: int) -> None:
    a = tone(300, 0.45, rate)
    d = Exotel(a, rate=rate, params={"k": "v"}, dtmf="9")
    assert d.tick_s == 0.1 and d.n_ticks == 5
    assert f'"sample_rate":"{rate}"' in d.opening(KEY)[1]  # a string, as Exotel sends it
    events = feed(ExotelStreamParser(), d.script(KEY), close=False)
    got = check_call(events, d, KEY, ("inbound",), "stop")
    assert got["inbound"] == padded(a, rate // 10).astype("<i2").tobytes()
    assert events[0].metadata["param.k"] == "v"
    assert [e.digit for e in events if isinstance(e, Dtmf)] == ["9"]


@pytest.mark.parametrize("rate", [8000, 16000])
def test_vonage_round_trip_one_mixed_leg(rate: int) -> None:
    a, b = tone(440, 0.3, rate), tone(900, 0.2, rate)
    d = Vonage(mix(a, b), rate=rate, params={"tenant": "t1"}, dtmf="#")
    script = d.script(KEY)
    assert isinstance(script[0], str) and all(isinstance(f, bytes) and len(f) == rate // 25 for f in script[1:]
                                              if not isinstance(f, str) or "dtmf" not in f)
    events = feed(VonageStreamParser(), script, close=True)
    got = check_call(events, d, KEY, ("mixed",), "socket_closed")
    assert got["mixed"] == padded(mix(a, b), rate // 50).astype("<i2").tobytes()
    assert events[0].metadata["header.tenant"] == "t1"
    assert [e.digit for e in events if isinstance(e, Dtmf)] == ["#"]


@pytest.mark.parametrize(("mix_type", "late"), [("mono", 0), ("mixed", 0), ("stereo", 0), ("stereo", 7), ("mono", 3)])
def test_freeswitch_round_trip(mix_type: str, late: int) -> None:
    a, b = tone(440, 0.3, 16000), tone(1200, 0.3, 16000)
    d = FreeSwitch(a, b, mix_type=mix_type, rate=16000, late_metadata=late, params={"tenant": "t"})
    assert d.handshake(KEY).subprotocols == ("audio.drachtio.org",)
    script = d.script(KEY)
    first_text = next(i for i, f in enumerate(script) if isinstance(f, str))
    assert first_text == late  # the metadata follows the first `late` audio frames
    p = FreeswitchForkParser(mix_type=mix_type, sample_rate=16000)  # type: ignore[arg-type]
    events = feed(p, script, close=True)
    legs = {"mono": ("caller",), "mixed": ("mixed",), "stereo": ("caller", "callee")}[mix_type]
    got = check_call(events, d, KEY, legs, "socket_closed")
    assert events[0].metadata["tenant"] == "t"
    if mix_type == "stereo":
        assert got["caller"] == padded(a, 320).astype("<i2").tobytes()
        assert got["callee"] == padded(b, 320).astype("<i2").tobytes()
    else:
        want = a if mix_type == "mono" else mix(a, b)
        assert got[legs[0]] == padded(want, 320).astype("<i2").tobytes()


@pytest.mark.parametrize("mix_type", ["mono", "stereo"])
def test_jambonz_round_trip(mix_type: str) -> None:
    a, b = tone(440, 0.25, 8000), tone(1200, 0.25, 8000)
    d = Jambonz(a, b, mix_type=mix_type, rate=8000, params={"customerData": "c"}, dtmf="7")
    assert d.handshake(KEY).subprotocols == ("audio.jambonz.org",)
    events = feed(JambonzListenParser(), d.script(KEY), close=True)
    legs = ("caller",) if mix_type == "mono" else ("caller", "callee")
    got = check_call(events, d, KEY, legs, "socket_closed")
    assert got["caller"] == padded(a, 160).astype("<i2").tobytes()
    assert events[0].metadata["customerData"] == "c" and events[0].metadata["mix_type"] == mix_type
    assert [e.digit for e in events if isinstance(e, Dtmf)] == ["7"]


@pytest.mark.parametrize(("fmt", "control", "late"), [("ulaw", "json", 0), ("slin16", "plain", 0),
                                                       ("alaw", "json", 4), ("slin", "plain", 2)])
def test_asterisk_round_trip(fmt: str, control: str, late: int) -> None:
    rate = 16000 if fmt == "slin16" else 8000
    a = tone(440, 0.25, rate)
    d = AsteriskWs(a, fmt=fmt, control=control, late_media_start=late, params={"tenant": "t"}, dtmf="3")
    script = d.script(KEY)
    assert next(i for i, f in enumerate(script) if isinstance(f, str)) == late
    events = feed(AsteriskWebsocketParser(), script, close=True)
    got = check_call(events, d, KEY, ("channel",), "socket_closed")
    enc = {"ulaw": encode_ulaw, "alaw": encode_alaw}.get(fmt, le16)
    assert got["channel"] == enc(padded(a, rate // 50))
    assert events[0].metadata["format"] == fmt
    if control == "json":
        assert events[0].metadata["var.tenant"] == "t"
    assert [e.digit for e in events if isinstance(e, Dtmf)] == ["3"]


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_audiosocket_round_trip_in_tcp_pieces(rate: int) -> None:
    a = tone(440, 0.25, rate)
    d = AudioSocket(a, rate=rate, dtmf="*")
    stream = b"".join(f for f in d.script(KEY) if isinstance(f, bytes))
    p = AudioSocketParser()
    rng = random.Random(3)
    events: list[Any] = []
    pos = 0
    while pos < len(stream):  # TCP splits anywhere
        step = rng.randint(1, 700)
        events += p.receive_data(stream[pos : pos + step])
        pos += step
    got = check_call(events, d, KEY, ("channel",), "hangup")
    assert got["channel"] == padded(a, rate // 50).astype("<i2").tobytes()
    assert {e.fmt.sample_rate for e in events if isinstance(e, Audio)} == {rate}
    assert [e.digit for e in events if isinstance(e, Dtmf)] == ["*"]


def dialects() -> list[ForkDialect]:
    a, b = tone(440, 0.2, 8000), tone(600, 0.2, 8000)
    return [Telnyx({"inbound": a, "outbound": b}, dtmf="1"), Plivo({"inbound": a}, dtmf="1"), Exotel(a, dtmf="1"),
            Vonage(a, rate=8000, dtmf="1"), FreeSwitch(a, b, mix_type="stereo", late_metadata=3),
            Jambonz(a, dtmf="1"), AsteriskWs(a, late_media_start=2, dtmf="1"), AudioSocket(a, dtmf="1")]


@pytest.mark.parametrize("dialect", dialects(), ids=lambda d: d.name)
def test_templates_patch_to_the_calls_own_frames(dialect: ForkDialect) -> None:
    """The driver builds ticks once with a placeholder key: patched, they equal the call's own."""
    ws = dialect.transport == "ws"
    template = TemplateTicks(dialect.ticks(PLACEHOLDER), ws=ws)
    own = dialect.ticks(KEY)
    assert template.n == len(own) == dialect.n_ticks
    for i, tick in enumerate(own):
        assert template.take(KEY.encode(), i, i + 1) == (b"".join(wire(f, ws=ws) for f in tick), len(tick))
    assert template.take(KEY.encode(), 0, template.n)[1] == sum(len(t) for t in own)
