"""RTP and RTCP parsing (RFC 3550, RFC 5761 muxing), sans-I/O. Malformed input raises RtpError
with a short reason label (used as the drop metric label); nothing else is ever raised."""

from __future__ import annotations

import struct
from dataclasses import dataclass


class RtpError(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RtpPacket:
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrcs: tuple[int, ...]
    payload: bytes


@dataclass(frozen=True, slots=True)
class RtcpPacket:
    packet_type: int  # 200 SR, 201 RR, 202 SDES, 203 BYE, 204 APP
    ssrc: int
    ssrcs: tuple[int, ...] = ()  # BYE: the sources leaving
    ntp_seconds: float = 0.0  # SR
    rtp_timestamp: int = 0  # SR


RTCP_SR, RTCP_RR, RTCP_SDES, RTCP_BYE, RTCP_APP = 200, 201, 202, 203, 204


def is_rtcp(data: bytes) -> bool:
    """RFC 5761 §4: on a muxed port, RTCP packet types 192–223 sit where RTP's M+PT byte is."""
    return len(data) >= 2 and 192 <= data[1] <= 223


def parse_rtp(data: bytes) -> RtpPacket:
    n = len(data)
    if n < 12:
        raise RtpError("too_short")
    b0, b1, seq, ts, ssrc = struct.unpack_from("!BBHII", data)
    if b0 >> 6 != 2:
        raise RtpError("bad_version")
    cc = b0 & 0x0F
    offset = 12 + 4 * cc
    if offset > n:
        raise RtpError("bad_csrc")
    csrcs = struct.unpack_from(f"!{cc}I", data, 12) if cc else ()
    if b0 & 0x10:  # header extension: 16-bit profile, 16-bit length in words
        if offset + 4 > n:
            raise RtpError("bad_extension")
        (ext_words,) = struct.unpack_from("!H", data, offset + 2)
        offset += 4 + 4 * ext_words
        if offset > n:
            raise RtpError("bad_extension")
    end = n
    if b0 & 0x20:
        pad = data[-1]
        if pad == 0 or offset + pad > n:
            raise RtpError("bad_padding")
        end = n - pad
    return RtpPacket(bool(b1 & 0x80), b1 & 0x7F, seq, ts, ssrc, tuple(csrcs), bytes(data[offset:end]))


def build_rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False,
              csrcs: tuple[int, ...] = (), extension: bytes | None = None, padding: int = 0) -> bytes:
    """Serialize a packet (load generators and tests)."""
    b0 = 0x80 | len(csrcs) | (0x10 if extension is not None else 0) | (0x20 if padding else 0)
    out = struct.pack("!BBHII", b0, (0x80 if marker else 0) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    out += b"".join(struct.pack("!I", c) for c in csrcs)
    if extension is not None:
        ext = extension + b"\x00" * (-len(extension) % 4)
        out += struct.pack("!HH", 0xBEDE, len(ext) // 4) + ext
    out += payload
    if padding:
        out += b"\x00" * (padding - 1) + bytes([padding])
    return out


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Every packet of a compound RTCP datagram that we use (SR, BYE); others are skipped."""
    out: list[RtcpPacket] = []
    offset = 0
    n = len(data)
    if n < 8:
        raise RtpError("rtcp_too_short")
    while offset + 4 <= n:
        b0, pt, length = struct.unpack_from("!BBH", data, offset)
        if b0 >> 6 != 2:
            raise RtpError("rtcp_bad_version")
        size = 4 * (length + 1)
        if offset + size > n:
            raise RtpError("rtcp_truncated")
        count = b0 & 0x1F
        if pt == RTCP_SR and size >= 28:
            ssrc, ntp_hi, ntp_lo, rtp_ts = struct.unpack_from("!IIII", data, offset + 4)
            out.append(RtcpPacket(pt, ssrc, ntp_seconds=ntp_hi + ntp_lo / 2**32, rtp_timestamp=rtp_ts))
        elif pt == RTCP_BYE:
            if size < 4 + 4 * count:
                raise RtpError("rtcp_truncated")
            ssrcs = struct.unpack_from(f"!{count}I", data, offset + 4) if count else ()
            out.append(RtcpPacket(pt, ssrcs[0] if ssrcs else 0, ssrcs=tuple(ssrcs)))
        offset += size
    return out


def build_rtcp_bye(ssrc: int) -> bytes:
    return struct.pack("!BBHI", 0x81, RTCP_BYE, 1, ssrc)
