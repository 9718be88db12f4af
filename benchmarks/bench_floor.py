"""The floor under spoofwatch's cost per call: what the libraries it is built on (uvloop, grpc.aio, soxr,
msgspec) cost for the work one call needs, measured alone, with none of spoofwatch's own code, side by
side in one run. The sum is a lower bound on the daemon's CPU per call·s, and so an upper bound on the
calls one core can carry; `benchmarks/run.py`'s measured µs/frame is set next to it.

Per call·s (one leg, 20 ms frames, 250 ms chunks):
- RTP:    50 × UDP datagram received by uvloop + 4 × (soxr 8→16 kHz per chunk + grpc.aio stream write)
- Twilio: 50 × (TCP read of a ~330-byte websocket message by uvloop + msgspec decode of the media JSON
          with its base64) + 4 × (soxr + grpc.aio write)

This process is pinned to CPU 0; the peers (UDP/TCP senders, the simulator) run on CPU 1.

    .venv/bin/python benchmarks/bench_floor.py [--calls 400] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CREDS, free_port, pin, start_simulator, stop
from daemon.audio.path import LegAudioPath
from daemon.ingest.twilio.mediastruct import decode_media
from daemon.model import PCMU_8K

CHUNKS_PER_S = 4
FRAMES_PER_S = 50


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


async def measure(seconds: float, count: Callable[[], int]) -> float:
    """CPU µs of this process per counted event over `seconds` of steady state."""
    c0, n0 = cpu_s(), count()
    await asyncio.sleep(seconds)
    c1, n1 = cpu_s(), count()
    return (c1 - c0) / max(1, n1 - n0) * 1e6


def sender(code: str) -> subprocess.Popen[bytes]:
    """A Python peer on CPU 1."""
    cmd = [sys.executable, "-c", code]
    if os.path.exists("/usr/bin/taskset"):
        cmd = ["taskset", "-c", "1", *cmd]
    return subprocess.Popen(cmd)


PACED = """
import socket, sys, time
{setup}
t0 = time.monotonic(); tick = 0
while time.monotonic() - t0 < {seconds}:
    {send}
    tick += 1
    d = t0 + tick * 0.02 - time.monotonic()
    if d > 0:
        time.sleep(d)
"""


async def udp_floor(calls: int, seconds: float) -> float:
    loop = asyncio.get_running_loop()
    got = [0]

    class Recv(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            got[0] += 1

    addrs, transports = [], []
    for _ in range(calls):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        t, _ = await loop.create_datagram_endpoint(Recv, sock=s)
        transports.append(t)
        addrs.append(s.getsockname())
    peer = sender(PACED.format(seconds=seconds + 3, setup=f"a = {addrs!r}\ns = socket.socket(socket.AF_INET, "
                               "socket.SOCK_DGRAM)\np = bytes(172)",
                               send="for x in a: s.sendto(p, x)"))
    try:
        await asyncio.sleep(1.5)
        return await measure(seconds, lambda: got[0])
    finally:
        await asyncio.to_thread(peer.wait)
        for t in transports:
            t.close()


def media_json(n: int) -> bytes:
    return json.dumps({"event": "media", "sequenceNumber": str(n), "streamSid": "MZ" + "0" * 32,
                       "media": {"track": "inbound", "chunk": str(n), "timestamp": str(20 * n),
                                 "payload": base64.b64encode(bytes(range(160))).decode()}}).encode()


async def tcp_floor(calls: int, seconds: float) -> tuple[float, int]:
    """µs per websocket-sized message read by a uvloop stream protocol, and the message size."""
    loop = asyncio.get_running_loop()
    got = [0]

    class Recv(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            got[0] += 1

    server = await loop.create_server(Recv, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    message = b"\x81\x7e\x01\x4a" + bytes(4) + media_json(1)  # a masked text frame's size
    setup = (f"socks = [socket.create_connection(('127.0.0.1', {port})) for _ in range({calls})]\n"
             f"m = {message!r}")
    peer = sender(PACED.format(seconds=seconds + 3, setup=setup, send="for c in socks: c.send(m)"))
    try:
        await asyncio.sleep(1.5)
        return await measure(seconds, lambda: got[0]), len(message)
    finally:
        await asyncio.to_thread(peer.wait)
        server.close()


def json_floor(n: int = 20000) -> float:
    messages = [media_json(i) for i in range(100)]
    t0 = time.process_time()
    for i in range(n):
        decode_media(messages[i % 100])
    return (time.process_time() - t0) / n * 1e6


def soxr_floor(calls: int, chunks_each: int = 20) -> float:
    """µs per 250 ms chunk of LegAudioPath's G.711 path (decode + soxr + chunk), over `calls` legs in
    rotation (their filters do not all fit in cache, as in the daemon)."""
    frame = bytes(range(160))
    paths = [LegAudioPath(PCMU_8K) for _ in range(calls)]
    for p in paths:
        for _ in range(13):
            p.push(frame)
    t0, chunks = time.process_time(), 0
    for _ in range(chunks_each * 25 // 2):
        for p in paths:
            chunks += len(p.push(frame))
    return (time.process_time() - t0) / max(1, chunks) * 1e6


FRESH_KIB = """
import sys
sys.path.insert(0, {root!r})
def rss():
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])
import numpy as np, soxr
from daemon.audio.path import LegAudioPath
from daemon.model import PCMU_8K
r0 = rss()
{make}
print((rss() - r0) / {n})
"""


def fresh_kib(calls: int, make: str) -> float:
    """RSS growth per object in a fresh interpreter (in this one the allocator reuses earlier frees)."""
    code = FRESH_KIB.format(root=str(Path(__file__).resolve().parent.parent), make=make, n=calls)
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


async def grpc_floor(calls: int, seconds: float, channels: int = 4) -> tuple[float, float]:
    """µs per 8000-byte chunk written on `calls` DeepfakeDetection streams (4 per s each) against the
    simulator on CPU 1, and KiB of RSS per open stream."""
    import grpc

    from daemon.upstream.pb import api_pb2, api_pb2_grpc

    port = free_port()
    sim = await start_simulator(port)
    await pin(sim.pid, 1)
    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])
             for _ in range(channels)]
    stubs = [api_pb2_grpc.BehavioralStreamingApiStub(c) for c in chans]
    cid, key = int(CREDS["SPOOFWATCH_CID"]), CREDS["SPOOFWATCH_API_KEY"]
    config = api_pb2.AudioStream(cid=cid, x_auth_token=key, config=api_pb2.AudioConfig(
        encoding=api_pb2.LINEAR_PCM, sample_rate_hertz=16000))
    chunk = bytes(8000)
    writes, stopping = [0], asyncio.Event()
    opened = asyncio.Semaphore(0)

    async def leg(i: int) -> None:
        call = stubs[i % channels].DeepfakeDetection()

        async def drain() -> None:
            async for _ in call:
                pass

        reader = asyncio.create_task(drain())
        await call.write(config)
        opened.release()
        await asyncio.sleep((i % 100) / 400)  # out of phase, as legs are
        t0, k = time.monotonic(), 0
        while not stopping.is_set():
            k += 1
            await call.write(api_pb2.AudioStream(cid=cid, x_auth_token=key, audio_content=chunk))
            writes[0] += 1
            if (d := t0 + k / CHUNKS_PER_S - time.monotonic()) > 0:
                await asyncio.sleep(d)
        await call.done_writing()
        await reader

    r0 = rss_kib()
    tasks = [asyncio.create_task(leg(i)) for i in range(calls)]
    try:
        for _ in range(calls):
            await opened.acquire()
        await asyncio.sleep(1.0)
        kib = (rss_kib() - r0) / calls
        us = await measure(seconds, lambda: writes[0])
    finally:
        stopping.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in chans:
            await c.close(None)
        await stop(sim)
    return us, kib


async def measure_floor(calls: int, seconds: float) -> dict[str, float]:
    """Every stage's cost (this process must already be pinned, peers go to CPU 1), and the floors."""
    udp = await udp_floor(calls, seconds)
    tcp, msg_bytes = await tcp_floor(calls, seconds)
    js = json_floor()
    sox = soxr_floor(calls)
    sox_kib = fresh_kib(calls, f"s = [soxr.ResampleStream(8000, 16000, 1, dtype='int16') for _ in range({calls})]\n"
                               "for x in s: x.resample_chunk(np.zeros(2000, dtype=np.int16))")
    path_kib = fresh_kib(calls, f"p = [LegAudioPath(PCMU_8K) for _ in range({calls})]\n"
                                "for x in p:\n    for _ in range(13): x.push(bytes(160))")
    grpc_us, grpc_kib = await grpc_floor(calls, seconds)
    return {"calls": calls, "udp_us": udp, "tcp_us": tcp, "ws_message_bytes": msg_bytes, "json_us": js,
            "soxr_chunk_us": sox, "soxr_stream_kib": sox_kib, "audio_path_kib": path_kib,
            "grpc_write_us": grpc_us, "grpc_stream_kib": grpc_kib,
            "rtp_ms_per_call_s": (FRAMES_PER_S * udp + CHUNKS_PER_S * (sox + grpc_us)) / 1000,
            "twilio_ms_per_call_s": (FRAMES_PER_S * (tcp + js) + CHUNKS_PER_S * (sox + grpc_us)) / 1000}


def floor_markdown(f: dict[str, float]) -> str:
    lines = [f"Library floor ({f['calls']:.0f} legs per measurement; `benchmarks/bench_floor.py`, this run):", "",
             "| stage | unit | µs per unit | units per call·s | KiB per leg |", "|---|---|---|---|---|",
             f"| uvloop UDP receive | datagram (172 B) | {f['udp_us']:.1f} | {FRAMES_PER_S} | – |",
             f"| uvloop TCP receive | websocket message ({f['ws_message_bytes']:.0f} B) | {f['tcp_us']:.1f} | "
             f"{FRAMES_PER_S} | – |",
             f"| msgspec media JSON + base64 | message | {f['json_us']:.1f} | {FRAMES_PER_S} | – |",
             f"| μ-law decode + soxr HQ 8→16 kHz + chunk | 250 ms chunk | {f['soxr_chunk_us']:.1f} | {CHUNKS_PER_S} | "
             f"{f['soxr_stream_kib']:.0f} (soxr stream); {f['audio_path_kib']:.0f} (whole path) |",
             f"| grpc.aio stream write, 8000 B | chunk | {f['grpc_write_us']:.1f} | {CHUNKS_PER_S} | "
             f"{f['grpc_stream_kib']:.0f} (open stream) |", "",
             "| ingest | floor ms CPU per call·s | calls per core at 100 % | at 85 % |", "|---|---|---|---|"]
    for name in ("rtp", "twilio"):
        ms = f[f"{name}_ms_per_call_s"]
        lines.append(f"| {name} | {ms:.2f} | {1000 / ms:.0f} | {850 / ms:.0f} |")
    return "\n".join(lines)


def pin_here(cpu: int = 0) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {cpu})


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=400, help="legs in each measurement")
    p.add_argument("--seconds", type=float, default=6.0, help="steady-state window of each network measurement")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON line (benchmarks/run.py)")
    args = p.parse_args()
    pin_here(0)
    result = await measure_floor(args.calls, args.seconds)
    print(json.dumps(result) if args.json else floor_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(uvloop.run(main()))
