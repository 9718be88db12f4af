"""WHIP's sans-I/O core: request checks, offer checks, leg names, call identity, channel pick, batching."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.ingest.whip.media import first_channel, group_by_rate
from daemon.ingest.whip.protocol import (
    MAX_AUDIO_TRACKS,
    MAX_METADATA_PARAMS,
    WhipRefusal,
    call_identity,
    check_bearer,
    check_content_type,
    check_offer,
    sanitise_call_id,
)
from daemon.model import Codec

HEAD = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
TRANSPORT = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\na=fingerprint:sha-256 AA:BB\r\na=setup:actpass\r\n"


def audio(mid: str = "0", fmts: str = "111 0", rtpmap: str = "a=rtpmap:111 opus/48000/2\r\n",
          direction: str = "sendonly", msid: str = "", port: int = 9) -> str:
    return (f"m=audio {port} UDP/TLS/RTP/SAVPF {fmts}\r\nc=IN IP4 0.0.0.0\r\n{TRANSPORT}a=mid:{mid}\r\n"
            f"a={direction}\r\n" + (f"a=msid:{msid}\r\n" if msid else "") + rtpmap)


def video(fmts: str = "96", rtpmap: str = "a=rtpmap:96 VP8/90000\r\n") -> str:
    return f"m=video 9 UDP/TLS/RTP/SAVPF {fmts}\r\n{TRANSPORT}a=mid:v\r\na=sendonly\r\n{rtpmap}"


def refusal(sdp: str) -> WhipRefusal:
    with pytest.raises(WhipRefusal) as err:
        check_offer(sdp)
    return err.value


# request checks ---------------------------------------------------------------------------------
def test_bearer_token() -> None:
    check_bearer("Bearer s3cret", "s3cret")
    check_bearer("bearer  s3cret ", "s3cret")  # scheme is case-insensitive (RFC 6750)
    for header in (None, "", "Basic s3cret", "Bearer", "Bearer wrong", "s3cret"):
        with pytest.raises(WhipRefusal) as err:
            check_bearer(header, "s3cret")
        assert err.value.status == 401 and err.value.reason == "unauthorized"
        assert err.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_content_type() -> None:
    check_content_type("application/sdp")
    check_content_type("Application/SDP; charset=utf-8")
    for ct in (None, "", "text/plain", "application/json", "application/trickle-ice-sdpfrag"):
        with pytest.raises(WhipRefusal) as err:
            check_content_type(ct)
        assert err.value.status == 415 and err.value.headers["Accept-Post"] == "application/sdp"


# offers -----------------------------------------------------------------------------------------
def test_browser_like_offer_gives_one_opus_leg() -> None:
    offer = check_offer(HEAD + audio(msid="{4d1e...} {9b2c6a0e-7c8f-4d55-b3a1-3f0b6e1f2a77}"))
    [(section, leg)] = offer.legs
    assert leg == "track-0"  # numeric mid and a UUID track id are not names
    fmt = section.audio_format()
    assert fmt is not None and fmt.codec is Codec.OPUS and fmt.sample_rate == 48000


def test_named_tracks_become_leg_names_sanitised_and_unique() -> None:
    sdp = HEAD + audio(mid="caller") + audio(mid="agent ✓/1") + audio(mid="caller!") + audio(mid="1", msid="s agent2")
    assert [leg for _, leg in check_offer(sdp).legs] == ["caller", "agent___1", "track-2", "agent2"]


def test_static_payload_types_without_rtpmap() -> None:
    [(section, _)] = check_offer(HEAD + audio(fmts="0 8", rtpmap="")).legs
    fmt = section.audio_format()
    assert fmt is not None and fmt.codec is Codec.PCMU


@pytest.mark.parametrize(("sdp", "status", "reason", "needle"), [
    ("", 400, "bad_sdp", "v=0"),
    ("hello", 400, "bad_sdp", "v=0"),
    ("v=0\r\nnot an sdp line\r\n", 400, "bad_sdp", "line 2"),
    ("v=0\r\nm=audio nine UDP 0\r\n", 400, "bad_sdp", "malformed m-line"),
    (HEAD, 400, "bad_sdp", "no m-line"),
    (HEAD + audio(rtpmap="a=rtpmap:x opus\r\n"), 400, "bad_sdp", "rtpmap"),
    (HEAD + audio().replace("a=ice-ufrag:abcd\r\n", ""), 400, "bad_sdp", "a=ice-ufrag"),
    (HEAD + audio().replace("a=setup:actpass\r\n", ""), 400, "bad_sdp", "a=setup"),
    (HEAD + audio().replace("a=sendonly\r\n", ""), 400, "bad_sdp", "no direction"),
    (HEAD + audio() + audio(), 400, "bad_sdp", "more than one m-line"),
    (HEAD + audio().replace("a=mid:0\r\n", ""), 400, "bad_sdp", "no a=mid"),
    (HEAD + video(), 422, "no_audio", "no audio"),
    (HEAD + audio(direction="recvonly"), 422, "no_audio", "no audio"),
    (HEAD + audio(port=0), 422, "no_audio", "no audio"),
    (HEAD + audio(fmts="102", rtpmap="a=rtpmap:102 iLBC/8000\r\n"), 406, "unsupported_codec", "ilbc/8000; we take"),
    (HEAD + audio(fmts="97", rtpmap="a=rtpmap:97 opus/16000/1\r\n"), 406, "unsupported_codec", "opus/48000/2"),
    (HEAD + audio() + video(fmts="45", rtpmap="a=rtpmap:45 AV1/90000\r\n"), 422, "unsupported_codec", "av1"),
    (HEAD + "".join(audio(mid=str(i)) for i in range(MAX_AUDIO_TRACKS + 1)), 422, "too_many_tracks", "at most"),
])
def test_bad_offers_refused_with_reason(sdp: str, status: int, reason: str, needle: str) -> None:
    err = refusal(sdp)
    assert (err.status, err.reason) == (status, reason)
    assert needle in err.detail


def test_video_alongside_audio_is_accepted() -> None:
    offer = check_offer(HEAD + audio() + video())  # video is answered inactive by the server
    assert [leg for _, leg in offer.legs] == ["track-0"]


# call identity ----------------------------------------------------------------------------------
def test_call_identity_from_query() -> None:
    call_id, meta = call_identity([("call_id", " CA12/34 <x>"), ("agent", "7"), ("agent", "8"), ("queue", "")])
    assert call_id == "CA12_34__x"
    assert meta == {"agent": "7", "queue": ""}
    assert call_identity([]) == ("", {})
    assert call_identity([("call_id", "///")]) == ("", {})  # nothing usable left: the server generates one
    assert len(sanitise_call_id("x" * 1000)) == 128


@pytest.mark.parametrize("query", [
    [("bad key", "1")],
    [("k", "v" * 513)],
    [(f"k{i}", "v") for i in range(MAX_METADATA_PARAMS + 1)],
    [("", "v")],
])
def test_bad_metadata_refused(query: list[tuple[str, str]]) -> None:
    with pytest.raises(WhipRefusal) as err:
        call_identity(query)
    assert err.value.status == 400 and err.value.reason == "bad_metadata"


# media ------------------------------------------------------------------------------------------
def test_first_channel_never_mixes_speakers() -> None:
    left, right = np.full(960, 1000, np.int16), np.full(960, -7, np.int16)
    packed = np.stack([left, right], axis=1).reshape(1, -1)  # s16 packed stereo, as aiortc decodes Opus
    assert np.array_equal(first_channel(packed, 2, planar=False), left)
    planar = np.stack([left, right])  # s16p
    assert np.array_equal(first_channel(planar, 2, planar=True), left)
    mono = left.reshape(1, -1)
    assert np.array_equal(first_channel(mono, 1, planar=False), left)


def test_group_by_rate_conserves_samples_and_splits_on_rate_change() -> None:
    parts = [(np.full(960, i, np.int16), 48000, float(i)) for i in range(3)]
    parts += [(np.full(160, 3, np.int16), 8000, 3.0), (np.full(960, 4, np.int16), 48000, 4.0)]
    out = group_by_rate(parts)
    assert [(len(b.samples), b.rate, b.received_at) for b in out] == [(2880, 48000, 0.0), (160, 8000, 3.0),
                                                                      (960, 48000, 4.0)]
    joined = np.concatenate([b.samples for b in out])
    assert np.array_equal(joined, np.concatenate([p[0] for p in parts]))
    assert all(b.samples.flags.c_contiguous for b in out)
    assert group_by_rate([]) == []


# any input ----------------------------------------------------------------------------------------
_LINES = (HEAD + audio() + video()).split("\r\n")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=600) | st.lists(st.sampled_from(_LINES) | st.text(max_size=40), max_size=40).map("\r\n".join))
def test_any_body_is_an_offer_or_a_clear_refusal(text: str) -> None:
    try:
        offer = check_offer(text)
    except WhipRefusal as err:
        assert err.status in (400, 406, 422) and err.detail
    else:
        assert 1 <= len(offer.legs) <= MAX_AUDIO_TRACKS
        assert len({leg for _, leg in offer.legs}) == len(offer.legs)


# frame tap (aiortc's encoded frames on the loop) -------------------------------------------------
async def test_tap_decodes_one_iterations_frames_together_and_ends_once() -> None:
    import fractions

    import av
    from aiortc.codecs.opus import OpusEncoder
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from daemon.clock import SystemClock
    from daemon.ingest.whip.tap import FrameTap

    class Receiver:  # stands for aiortc's RTCRtpReceiver before it starts
        def __init__(self) -> None:
            self._RTCRtpReceiver__decoder_queue: object = None
            self._RTCRtpReceiver__started = False

    got: list[tuple[list[tuple[int, int]], int]] = []
    ended: list[bool] = []
    drops: list[str] = []
    tap = FrameTap(clock=SystemClock(), on_batches=lambda b, n: got.append(([(len(x.samples), x.rate) for x in b], n)),
                   on_end=lambda: ended.append(True), on_drop=drops.append)
    receiver = Receiver()
    tap.install(receiver)
    assert receiver._RTCRtpReceiver__decoder_queue is tap
    assert tap.get() is None  # aiortc's decoder thread ends at its first question

    enc = OpusEncoder()
    codec = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    packets: list[bytes] = []
    for i in range(4):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, i * 960, fractions.Fraction(1, 48000)
        packets += enc.encode(frame)[0]
    assert packets
    for n, data in enumerate(packets):
        tap.put((codec, JitterFrame(data=data, timestamp=n * 960)))
    tap.put((codec, JitterFrame(data=b"\xff\xff\xff", timestamp=0)))  # not Opus
    assert got == []  # decoded on the next loop iteration, together
    for _ in range(50):
        if got:
            break
        await asyncio.sleep(0)
    [([(samples, rate)], frames)] = got  # one batch: 20 ms per packet, at libopus' 16 kHz (or PyAV's 48)
    assert rate in (16000, 48000) and samples == rate // 50 * len(packets) and frames == len(packets) + 1
    assert drops == ["decode_error"]
    tap.put(None)
    tap.put(None)
    tap.put((codec, JitterFrame(data=packets[0], timestamp=0)))  # after the end: ignored
    assert ended == [True] and tap.ended and len(got) == 1


def _opus_packets(channels: int, left: np.ndarray, right: np.ndarray) -> list[bytes]:
    import av

    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.format, enc.bit_rate = 48000, "s16", 64000
    enc.layout = "stereo" if channels == 2 else "mono"
    out: list[bytes] = []
    for i in range(0, len(left) - 959, 960):
        pcm = np.stack([left[i:i + 960], right[i:i + 960]], axis=1).reshape(1, -1) if channels == 2 \
            else left[i:i + 960].reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout=enc.layout.name)
        frame.sample_rate, frame.pts = 48000, i
        out += [bytes(p) for p in enc.encode(frame)]
    return out


@pytest.mark.parametrize("system_libopus", [True, False])
def test_track_decoder_takes_the_first_channel_of_stereo_opus_never_the_average(
        system_libopus: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from daemon.ingest.whip import libopus
    from daemon.ingest.whip.decode import TrackDecoder

    if system_libopus:
        assert libopus.OpusDecoder.available(), "libopus.so.0 (Debian libopus0) is not installed"
    else:  # the PyAV fallback
        monkeypatch.setattr(libopus.OpusDecoder, "available", staticmethod(lambda: False))
    want_rate = 16000 if system_libopus else 48000

    opus = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
    t = np.arange(48000 // 2)
    tone = (np.sin(2 * np.pi * 440 * t / 48000) * 12000).astype(np.int16)
    silence = np.zeros_like(tone)
    dec = TrackDecoder()
    mono = [s for p in _opus_packets(1, tone, tone) for s in dec.decode(opus, JitterFrame(p, 0))]
    assert mono and all(rate == want_rate and len(x) == rate // 50 for x, rate in mono)
    stereo = [s for p in _opus_packets(2, tone, silence) for s in dec.decode(opus, JitterFrame(p, 0))]
    assert stereo and all(rate == want_rate and len(x) == rate // 50 for x, rate in stereo)
    rms = float(np.sqrt(np.mean(np.concatenate([x for x, _ in stereo[5:]]).astype(np.float64) ** 2)))
    assert rms > 0.8 * 12000 / np.sqrt(2), rms  # the left speaker at full level: an average would be half
    swapped = [s for p in _opus_packets(2, silence, tone) for s in TrackDecoder().decode(opus, JitterFrame(p, 0))]
    rms_right = float(np.sqrt(np.mean(np.concatenate([x for x, _ in swapped[5:]]).astype(np.float64) ** 2)))
    assert rms_right < 0.1 * rms, rms_right  # the right speaker never leaks into the leg
