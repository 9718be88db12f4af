"""RTP/RTCP parsing: header fields, padding, extension, CSRC; malformed input → RtpError(reason)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.audio.codecmap import CodecMap, CodecMapError, parse_map, parse_rtpmap
from daemon.ingest.rtp.packet import (
    RTCP_BYE,
    RTCP_SR,
    RtpError,
    build_rtcp_bye,
    build_rtp,
    is_rtcp,
    parse_rtcp,
    parse_rtp,
)
from daemon.model import Codec


def test_fields_padding_extension_csrc() -> None:
    raw = build_rtp(8, 65535, 2**32 - 160, 0xDEADBEEF, b"\xd5" * 160, marker=True, csrcs=(1, 2),
                    extension=b"\x10\xff", padding=4)
    p = parse_rtp(raw)
    assert (p.marker, p.payload_type, p.sequence, p.timestamp, p.ssrc) == (True, 8, 65535, 2**32 - 160, 0xDEADBEEF)
    assert p.csrcs == (1, 2) and p.payload == b"\xd5" * 160


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x80\x00", "too_short"),
    (b"\x40" + b"\x00" * 11, "bad_version"),
    (b"\x8f" + b"\x00" * 11, "bad_csrc"),
    (b"\x90" + b"\x00" * 11, "bad_extension"),
    (b"\x90" + b"\x00" * 11 + b"\xbe\xde\x00\x09", "bad_extension"),
    (b"\xa0" + b"\x00" * 11 + b"\x00", "bad_padding"),
    (b"\xa0" + b"\x00" * 11 + b"\x05", "bad_padding"),
])
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError) as err:
        parse_rtp(data)
    assert err.value.reason == reason


@given(st.binary(max_size=300))
def test_garbage_never_raises_anything_else(data: bytes) -> None:
    try:
        parse_rtp(data)
    except RtpError:
        pass
    try:
        parse_rtcp(data)
    except RtpError:
        pass


@given(pt=st.integers(0, 127), seq=st.integers(0, 65535), ts=st.integers(0, 2**32 - 1),
       ssrc=st.integers(0, 2**32 - 1), payload=st.binary(max_size=400), marker=st.booleans(),
       csrcs=st.lists(st.integers(0, 2**32 - 1), max_size=15), pad=st.integers(0, 20))
def test_round_trip(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool, csrcs: list[int],
                    pad: int) -> None:
    p = parse_rtp(build_rtp(pt, seq, ts, ssrc, payload, marker=marker, csrcs=tuple(csrcs), padding=pad))
    assert (p.payload_type, p.sequence, p.timestamp, p.ssrc, p.payload, p.marker, p.csrcs) == (
        pt, seq, ts, ssrc, payload, marker, tuple(csrcs))


def test_rtcp_sr_and_bye_compound_and_mux_detection() -> None:
    sr = struct.pack("!BBHIIIIII", 0x80, RTCP_SR, 6, 0x1234, 3_900_000_000, 2**31, 16000, 10, 1600)
    compound = sr + build_rtcp_bye(0x1234)
    kinds = [(p.packet_type, p.ssrc) for p in parse_rtcp(compound)]
    assert kinds == [(RTCP_SR, 0x1234), (RTCP_BYE, 0x1234)]
    assert parse_rtcp(compound)[0].rtp_timestamp == 16000
    assert is_rtcp(compound) and not is_rtcp(build_rtp(0, 1, 1, 1, b"x")) and not is_rtcp(build_rtp(96, 1, 1, 1, b""))
    with pytest.raises(RtpError):
        parse_rtcp(sr[:-4] + b"\x00\x00\x00")


def test_codec_map() -> None:
    m = CodecMap(parse_map(["97 opus/48000/2"]), parse_map({"118": "L16/16000", "101": "telephone-event/8000"}))
    assert m.get(0) is not None and m.get(0).fmt.codec is Codec.PCMU  # type: ignore[union-attr]
    assert m.get(9).clock_rate == 8000 and m.get(9).fmt.sample_rate == 16000  # type: ignore[union-attr]
    assert m.get(97).fmt.codec is Codec.OPUS and m.get(118).fmt.sample_rate == 16000  # type: ignore[union-attr]
    assert not m.get(101).is_audio and not m.get(13).is_audio  # type: ignore[union-attr]
    assert m.get(120) is None
    for bad in ("speex/8000", "L16", "opus/abc", "L16/16000/9"):
        with pytest.raises(CodecMapError):
            parse_rtpmap(bad)
    with pytest.raises(CodecMapError):
        parse_map({"200": "PCMU/8000"})
