"""Send N concurrent real-time RTP streams (20 ms PCMU/PCMA packets) from one socket, bounded in
time. Ports come from --port-base (stream k → port-base + 2k, auto_calls) or from the control API
(--control-url and --token: one session per call, DELETEd at the end). RTCP BYE ends each stream."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

FRAME_S = 0.020


@dataclass
class RtpLoadResult:
    streams: int = 0
    packets_sent: int = 0
    ticks: int = 0
    late_ticks: int = 0
    max_lateness_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"streams: {self.streams}\npackets sent: {self.packets_sent}\n"
                f"late ticks (> 20 ms): {self.late_ticks}/{self.ticks}, "
                f"max lateness {self.max_lateness_s * 1000:.1f} ms"
                + "".join(f"\nerror: {e}" for e in self.errors[:10]))


#: sub-slots of a 20 ms tick that streams are spread over, and ticks over which their starts are spread
SLOTS = 10
START_SPREAD = 13  # 13 × 20 ms ≥ one 250 ms chunk


async def run_rtp_calls(host: str, ports: list[int], payload_8k: bytes, *, pt: int, duration_s: float,
                        bye: bool = True, ssrc_base: int = 0x5EED0000) -> RtpLoadResult:
    """Each port gets the clip's encoded bytes in 160-byte packets, looped, for `duration_s`."""
    import asyncio
    import socket
    import time

    from daemon.ingest.rtp.packet import build_rtcp_bye, build_rtp

    result = RtpLoadResult(streams=len(ports))
    frames = [payload_8k[i:i + 160] for i in range(0, len(payload_8k) - 159, 160)]
    if not frames:
        raise ValueError("clip shorter than one 20 ms packet")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    n_ticks = int(duration_s / FRAME_S)
    # Like real forks, streams are not in phase: stream k sends in sub-slot k % SLOTS of each 20 ms
    # tick and starts k % START_SPREAD ticks late, so calls' 250 ms chunk boundaries fall apart too.
    first_tick = [k % START_SPREAD for k in range(len(ports))]
    start = time.monotonic()
    try:
        for tick in range(n_ticks + START_SPREAD):
            for slot in range(SLOTS):
                due = start + tick * FRAME_S + slot * FRAME_S / SLOTS
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                late = time.monotonic() - due
                result.ticks += 1
                if late > FRAME_S:
                    result.late_ticks += 1
                result.max_lateness_s = max(result.max_lateness_s, late)
                for k in range(slot, len(ports), SLOTS):
                    i = tick - first_tick[k]
                    if not 0 <= i < n_ticks:
                        continue
                    pkt = build_rtp(pt, i, i * 160, ssrc_base + k, frames[i % len(frames)], marker=i == 0)
                    try:
                        sock.sendto(pkt, (host, ports[k]))
                        result.packets_sent += 1
                    except BlockingIOError:
                        result.errors.append("send buffer full")
        if bye:
            for k, port in enumerate(ports):
                sock.sendto(build_rtcp_bye(ssrc_base + k), (host, port + 1))
    finally:
        sock.close()
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port-base", type=int, default=40000, help="first port (stream k → port-base + 2k)")
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--clip", default="marked", help="WAV path or a bundled clip: clean, marked")
    p.add_argument("--codec", choices=("pcmu", "pcma"), default="pcmu")
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--control-url", help="allocate ports through the control API, e.g. http://127.0.0.1:9109")
    p.add_argument("--token", help="control API bearer token (default: $SPOOFWATCH_RTP_TOKEN)")
    p.add_argument("--no-bye", action="store_true", help="do not send RTCP BYE at the end")


def main(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from daemon.audio.codecs import encode_alaw, encode_ulaw
    from daemon.loadgen.twilio import load_clip_8k

    if args.calls < 1 or args.duration_s <= 0 or args.duration_s > 24 * 3600:
        print("spoofwatch loadgen rtp: --calls ≥ 1 and 0 < --duration-s ≤ 86400", file=sys.stderr)
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
                                     bye=not args.no_bye)
        if sessions:
            import aiohttp

            async with aiohttp.ClientSession(headers=headers) as http:
                for call_id in sessions:
                    async with http.delete(f"{args.control_url}/v1/rtp/sessions/{call_id}"):
                        pass
        print(result.summary())
        return 0 if not result.errors else 1

    return asyncio.run(go())
