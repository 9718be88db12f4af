"""`run_rtp_calls` (spoofwatch loadgen rtp) into real UDP sockets on 127.0.0.1: every stream gets its
packets in sequence, starts spread over the ramp, and its RTCP BYE after its own last packet."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

from daemon.ingest.rtp.packet import is_rtcp, parse_rtp
from daemon.loadgen.rtp import run_rtp_calls


@dataclass
class Port:
    """What one stream's RTP and RTCP ports received: (arrival, sequence number) and BYE arrivals."""

    rtp: list[tuple[float, int]] = field(default_factory=list)
    byes: list[float] = field(default_factory=list)
    bye_seen: asyncio.Event = field(default_factory=asyncio.Event)


class Recorder(asyncio.DatagramProtocol):
    def __init__(self, port: Port) -> None:
        self.port = port

    def datagram_received(self, data: bytes, addr: Any) -> None:
        now = asyncio.get_running_loop().time()
        if is_rtcp(data):
            self.port.byes.append(now)
            self.port.bye_seen.set()
        else:
            self.port.rtp.append((now, parse_rtp(data).sequence))


def free_pairs(n: int) -> list[socket.socket]:
    """n (RTP, RTCP) socket pairs on even/odd neighbouring ports, bound on 127.0.0.1."""
    socks: list[socket.socket] = []
    for _ in range(1000):  # bounded: a busy machine may take a few probes per pair
        if len(socks) == 2 * n:
            break
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
        probe.close()
        if base % 2 or base + 1 > 65535:
            continue
        pair = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            pair[0].bind(("127.0.0.1", base))
            pair[1].bind(("127.0.0.1", base + 1))
        except OSError:
            for s in pair:
                s.close()
            continue
        socks += pair
    assert len(socks) == 2 * n, "no free even/odd port pairs on 127.0.0.1"
    return socks


async def test_ramp_spreads_starts_and_each_stream_ends_with_its_bye() -> None:
    n, duration_s, ramp_s = 6, 0.2, 0.6  # 10 packets per stream; starts 0.1 s apart (plus the phase spread)
    loop = asyncio.get_running_loop()
    socks = free_pairs(n)
    ports = [Port() for _ in range(n)]
    transports = []
    for k in range(n):
        for s in socks[2 * k:2 * k + 2]:
            t, _ = await loop.create_datagram_endpoint(lambda p=ports[k]: Recorder(p), sock=s)  # type: ignore[misc]
            transports.append(t)
    try:
        rtp_ports = [socks[2 * k].getsockname()[1] for k in range(n)]
        async with asyncio.timeout(10):
            result = await run_rtp_calls("127.0.0.1", rtp_ports, bytes(range(256)) * 20, pt=0,
                                         duration_s=duration_s, ramp_s=ramp_s)
            for p in ports:  # the last BYE may still be in flight
                await p.bye_seen.wait()
    finally:
        for t in transports:
            t.close()
    assert result.packets_sent == n * 10 and not result.errors
    for p in ports:
        assert [seq for _, seq in p.rtp] == list(range(10))
        assert len(p.byes) == 1 and p.byes[0] >= p.rtp[-1][0]  # the BYE follows the stream's own last packet
    firsts = [p.rtp[0][0] for p in ports]
    # stream k starts k·ramp/n (+ k % 13 ticks of phase) after stream 0: the last well after the first
    assert firsts[-1] - firsts[0] >= 0.8 * (ramp_s * (n - 1) / n)
    assert ports[0].byes[0] < ports[-1].rtp[0][0]  # the first stream ended before the last one began
