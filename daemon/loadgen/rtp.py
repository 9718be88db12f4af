"""Send N concurrent real-time RTP streams (20 ms PCMU/PCMA packets), bounded in time. Ports come
from --port-base (stream k → port-base + 2k, auto_calls) or from the control API (--control-url and
--token: one session per call, DELETEd at the end). RTCP BYE ends each stream.

Cheap enough to drive 1,000 streams from one core next to a simulator: one pacer for all streams,
packets assembled from prepared pieces (a header prefix per tick and start offset, the SSRC per
stream, the payload per clip position: one C-level join per packet) and non-blocking sends in a
tight loop per sub-slot, from one socket (`sendto`) or one connected socket per stream (`send`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

FRAME_S = 0.020
LATENESS_BINS = 2000  # 1 ms bins; the last one holds everything later


@dataclass
class RtpLoadResult:
    streams: int = 0
    packets_sent: int = 0
    ticks: int = 0
    late_ticks: int = 0
    max_lateness_s: float = 0.0
    send_errors: int = 0  # send buffer full or port refused: the packet is not sent
    errors: list[str] = field(default_factory=list)
    lateness_ms: list[int] = field(default_factory=lambda: [0] * LATENESS_BINS)  # packets per 1 ms bin

    def lateness_quantile_ms(self, q: float) -> float:
        """Upper edge of the 1 ms bin holding quantile q of the packets' lateness (0 without any)."""
        total = sum(self.lateness_ms)
        acc = 0
        for i, c in enumerate(self.lateness_ms):
            acc += c
            if total and acc >= q * total:
                return float(i + 1)
        return 0.0

    def summary(self) -> str:
        return (f"streams: {self.streams}\npackets sent: {self.packets_sent}\n"
                f"late ticks (> 20 ms): {self.late_ticks}/{self.ticks}, "
                f"max lateness {self.max_lateness_s * 1000:.1f} ms, "
                f"p99 lateness ≤ {self.lateness_quantile_ms(0.99):.0f} ms\n"
                f"send errors: {self.send_errors}"
                + "".join(f"\nerror: {e}" for e in self.errors[:10]))


#: sub-slots of a 20 ms tick that streams are spread over, and ticks over which their starts are spread
SLOTS = 10
START_SPREAD = 13  # 13 × 20 ms ≥ one 250 ms chunk
SOCKET_MODES = ("one", "per-call")


async def run_rtp_calls(host: str, ports: list[int], payload_8k: bytes, *, pt: int, duration_s: float,
                        bye: bool = True, ssrc_base: int = 0x5EED0000, sockets: str = "one",
                        ramp_s: float = 0.0) -> RtpLoadResult:
    """Each port gets the clip's encoded bytes in 160-byte packets, looped, for `duration_s`, then
    (with `bye`) an RTCP BYE one tick after its last packet. Stream k starts k·ramp_s/streams late,
    on top of the phase spread below.

    sockets="one": every stream from one unconnected socket (`sendto`); "per-call": one connected
    socket per stream (`send`, no address to parse per packet)."""
    import asyncio
    import socket
    import struct
    import time

    from daemon.ingest.rtp.packet import build_rtcp_bye

    if sockets not in SOCKET_MODES:
        raise ValueError(f"sockets must be one of {SOCKET_MODES}")
    result = RtpLoadResult(streams=len(ports))
    frames = [payload_8k[i:i + 160] for i in range(0, len(payload_8k) - 159, 160)]
    if not frames:
        raise ValueError("clip shorter than one 20 ms packet")
    n_frames = len(frames)
    head = struct.Struct("!BBHI")  # V=2, M|PT, sequence number, timestamp: the SSRC follows per stream
    ssrcs = [struct.pack("!I", (ssrc_base + k) & 0xFFFFFFFF) for k in range(len(ports))]
    addrs = [(host, p) for p in ports]
    socks: list[socket.socket] = []
    try:
        if sockets == "one":
            socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            socks[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
            socks[0].setblocking(False)
        else:
            for addr in addrs:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.setblocking(False)
                s.connect(addr)
        one = socks[0]
        n_ticks = int(duration_s / FRAME_S)
        # Like real forks, streams are not in phase: stream k sends in sub-slot k % SLOTS of each 20 ms
        # tick and starts k % START_SPREAD ticks late, so calls' 250 ms chunk boundaries fall apart too.
        ramp_ticks = int(ramp_s / FRAME_S)
        offsets = [k % START_SPREAD + k * ramp_ticks // len(ports) for k in range(len(ports))]
        n_offsets = max(offsets) + 1
        by_slot = [[(k, offsets[k]) for k in range(slot, len(ports), SLOTS)] for slot in range(SLOTS)]
        ending: dict[int, list[int]] = {}  # start offset → streams that end one tick after n_ticks from it
        for k, g in enumerate(offsets):
            ending.setdefault(g, []).append(k)
        hist = result.lateness_ms
        start = time.monotonic()
        for tick in range(n_ticks + n_offsets + 1):
            if bye:
                for k in ending.get(tick - n_ticks - 1, ()):
                    try:
                        one.sendto(build_rtcp_bye(ssrc_base + k), (host, ports[k] + 1))
                    except OSError:
                        result.send_errors += 1
            # per start offset g: this tick's packet index and header prefix (None: not sending)
            heads: list[tuple[bytes, bytes] | None] = []
            for g in range(n_offsets):
                i = tick - g
                heads.append((head.pack(0x80, (0x80 if i == 0 else 0) | pt, i & 0xFFFF, (i * 160) & 0xFFFFFFFF),
                              frames[i % n_frames]) if 0 <= i < n_ticks else None)
            for slot in range(SLOTS):
                due = start + tick * FRAME_S + slot * FRAME_S / SLOTS
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                late = time.monotonic() - due
                result.ticks += 1
                if late > FRAME_S:
                    result.late_ticks += 1
                if late > result.max_lateness_s:
                    result.max_lateness_s = late
                sent = 0
                for k, g in by_slot[slot]:
                    hf = heads[g]
                    if hf is None:
                        continue
                    pkt = b"".join((hf[0], ssrcs[k], hf[1]))
                    try:
                        if sockets == "one":
                            one.sendto(pkt, addrs[k])
                        else:
                            socks[k].send(pkt)
                        sent += 1
                    except OSError:  # BlockingIOError (buffer full), ConnectionRefusedError (ICMP)
                        result.send_errors += 1
                result.packets_sent += sent
                hist[min(LATENESS_BINS - 1, max(0, int(late * 1000)))] += sent
    finally:
        for s in socks:
            s.close()
    if result.send_errors:
        result.errors.append(f"{result.send_errors} packets not sent (send buffer full or port refused)")
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port-base", type=int, default=20000,
                   help="first port (stream k → port-base + 2k; the daemon needs [ingest.rtp] auto_calls = true)")
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--clip", default="marked", help="WAV path or a bundled clip: clean, marked")
    p.add_argument("--codec", choices=("pcmu", "pcma"), default="pcmu")
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--control-url", help="allocate ports through the control API, e.g. http://127.0.0.1:9109")
    p.add_argument("--token", help="control API bearer token (default: $SPOOFWATCH_RTP_TOKEN)")
    p.add_argument("--no-bye", action="store_true", help="do not send RTCP BYE at the end")
    p.add_argument("--ramp-s", type=float, default=0.0,
                   help="spread stream starts over this many seconds (each ends duration-s after its start)")
    p.add_argument("--sockets", choices=SOCKET_MODES, default="one",
                   help="one unconnected socket for all streams, or one connected socket per stream")


def main(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from daemon.audio.codecs import encode_alaw, encode_ulaw
    from daemon.loadgen.twilio import load_clip_8k

    if args.calls < 1 or args.duration_s <= 0 or args.duration_s > 24 * 3600 or not 0 <= args.ramp_s <= 3600:
        print("spoofwatch loadgen rtp: --calls ≥ 1, 0 < --duration-s ≤ 86400 and 0 ≤ --ramp-s ≤ 3600", file=sys.stderr)
        return 2
    try:
        pcm = load_clip_8k(args.clip)
    except (OSError, ValueError) as exc:
        print(f"spoofwatch loadgen rtp: {exc}", file=sys.stderr)
        return 2
    payload, pt = (encode_ulaw(pcm), 0) if args.codec == "pcmu" else (encode_alaw(pcm), 8)

    async def go() -> int:
        ports = [args.port_base + 2 * k for k in range(args.calls)]
        sessions: list[str] = []
        if args.control_url:
            import aiohttp

            token = args.token or os.environ.get("SPOOFWATCH_RTP_TOKEN", "")
            headers = {"Authorization": f"Bearer {token}"}
            ports = []
            async with aiohttp.ClientSession(headers=headers) as http:
                for k in range(args.calls):
                    call_id = f"loadgen-{os.getpid()}-{k}"
                    async with http.post(f"{args.control_url}/v1/rtp/sessions",
                                         json={"call_id": call_id, "legs": [{"name": "caller"}]}) as resp:
                        body = await resp.json()
                        if resp.status != 201:
                            print(f"control API refused call {k}: {resp.status} {body}", file=sys.stderr)
                            break
                        ports.append(body["legs"][0]["port"])
                        sessions.append(call_id)
        result = await run_rtp_calls(args.host, ports, payload, pt=pt, duration_s=args.duration_s,
                                     bye=not args.no_bye, sockets=args.sockets, ramp_s=args.ramp_s)
        if sessions:
            import aiohttp

            async with aiohttp.ClientSession(headers=headers) as http:
                for call_id in sessions:
                    async with http.delete(f"{args.control_url}/v1/rtp/sessions/{call_id}"):
                        pass
        print(result.summary())
        return 0 if not result.errors else 1

    return asyncio.run(go())
