"""Memory per leg, by component, in one process (the daemon's own parts, not a running daemon).

    .venv/bin/python benchmarks/bench_memory.py [--legs 200] [--audio-s 6] [--part audio,upstream,websocket]

Each part opens `--legs` of one component, drives them to a steady state and reports the growth of the
process's RSS (everything: Python objects, numpy buffers, libsoxr, gRPC core) and of tracemalloc's count
(Python-allocated memory only) divided by the number of legs, in KiB:

- `audio`: one `LegAudioPath` (μ-law 8 kHz → soxr → 8000-byte chunks) per leg, `--audio-s` of a clip
  pushed in 20 ms payloads.
- `upstream`: one `LegStream` per leg (its queues, replay buffer, stall watch, grpc.aio call) on one
  `ChannelPool`, against the simulator in ANOTHER process (`spoofwatch simulator`, so its memory is not
  counted); `--audio-s` of voiced chunks each, then a wait until the results stop coming. Also reports
  what the replay buffers hold.
- `websocket`: one server connection per leg on a websockets server configured like the Twilio listener
  (`max_size`, no compression), the peers in another process, a few media messages sent on each
  (`websocket`: websockets' defaults; `websocket-small`: `max_queue=4` and a 16 KiB write limit).

Each part runs in its own child process, so RSS grows from a clean start.

Run it against another tree (e.g. the commit before a change) with `PYTHONPATH=<tree>` to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # appended: PYTHONPATH=<other tree> wins

CLIP = ROOT / "daemon/clips/speech_marked_16k.wav"
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Probe:
    """RSS and tracemalloc growth between `start()` and `per_leg()`."""

    def start(self) -> None:
        gc.collect()
        self.rss0, self.py0 = rss(), tracemalloc.get_traced_memory()[0]

    def per_leg(self, legs: int) -> tuple[float, float]:
        gc.collect()
        return (rss() - self.rss0) / legs / 1024, (tracemalloc.get_traced_memory()[0] - self.py0) / legs / 1024


def load_pcm16k() -> np.ndarray:
    import wave

    with wave.open(str(CLIP), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").copy()


def tiled(pcm: np.ndarray, samples: int) -> np.ndarray:
    return np.tile(pcm, samples // len(pcm) + 1)[:samples]


# audio ----------------------------------------------------------------------------------------------
def audio_part(legs: int, audio_s: float) -> dict[str, float]:
    from daemon.audio.codecs import encode_ulaw
    from daemon.audio.path import LegAudioPath
    from daemon.model import PCMU_8K

    ulaw = encode_ulaw(tiled(load_pcm16k()[::2], int(audio_s * 8000)))
    payloads = [ulaw[i:i + 160] for i in range(0, len(ulaw), 160)]
    probe = Probe()
    probe.start()
    paths = [LegAudioPath(PCMU_8K) for _ in range(legs)]
    for path in paths:
        for p in payloads:
            path.push(p)  # the chunks are dropped here, as the upstream queue would take them
    kib, py = probe.per_leg(legs)
    return {"audio_rss_kib": kib, "audio_py_kib": py}


# upstream -------------------------------------------------------------------------------------------
def start_simulator() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SPOOFWATCH_CID": "1", "SPOOFWATCH_API_KEY": "bench-memory"}
    proc = subprocess.Popen([sys.executable, "-m", "daemon.cli", "simulator", "--listen", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"127.0.0.1:{port}"
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the simulator did not start")


async def upstream_part(legs: int, audio_s: float) -> dict[str, float]:
    from daemon.clock import SystemClock
    from daemon.config import UpstreamConfig, UpstreamCredentials
    from daemon.model import LegRef
    from daemon.ops.metrics import Metrics
    from daemon.upstream.channels import ChannelPool
    from daemon.upstream.stream import LegStream

    pcm = tiled(load_pcm16k(), int(audio_s * 16000))
    raw = pcm.astype("<i2").tobytes()
    chunks = [raw[i:i + 8000] for i in range(0, len(raw) - 7999, 8000)]
    proc, target = start_simulator()
    metrics, clock = Metrics(), SystemClock()
    pool = ChannelPool(target, tls=False, size=2, keepalive_s=20, max_streams_per_channel=10000,
                       breaker_failures=5, breaker_open_s=1, clock=clock, metrics=metrics)
    results = [0]

    def on_result(_r: Any) -> None:
        results[0] += 1

    try:
        probe = Probe()
        probe.start()
        streams = [LegStream(pool, UpstreamCredentials(1, "bench-memory"), LegRef(f"call-{i}", "inbound"),
                             upstream=UpstreamConfig(), queue_chunks=40, replay_chunks=40, metrics=metrics,
                             clock=clock, on_result=on_result) for i in range(legs)]
        for s in streams:
            s.start()
        t0 = time.monotonic()
        for tick in range(len(chunks) * 25):  # a chunk per leg every 250 ms, legs spread over 25 ticks of 10 ms
            c = chunks[tick // 25]
            for s in streams[tick % 25::25]:
                s.send_chunk(bytes(bytearray(c)), clock.monotonic())  # its own copy, as a real leg has
            await asyncio.sleep(max(0.0, t0 + (tick + 1) * 0.01 - time.monotonic()))
        # settle: every chunk written and the results stopped coming for a second
        deadline, last, quiet_since = time.monotonic() + 60, -1, time.monotonic()
        while time.monotonic() < deadline:
            written = sum(s.chunks_sent for s in streams)
            if results[0] != last:
                last, quiet_since = results[0], time.monotonic()
            if written >= legs * len(chunks) and time.monotonic() - quiet_since > 1.0:
                break
            await asyncio.sleep(0.1)
        kib, py = probe.per_leg(legs)
        held = [len(s.chunks._replay) for s in streams]
        out = {"upstream_rss_kib": kib, "upstream_py_kib": py, "replay_chunks_mean": float(np.mean(held)),
               "replay_kib_mean": float(np.mean(held)) * 8000 / 1024, "results_per_leg": results[0] / legs,
               "chunks_written_per_leg": sum(s.chunks_sent for s in streams) / legs}
        await asyncio.gather(*(s.aclose() for s in streams))
        return out
    finally:
        await pool.close()
        proc.terminate()
        proc.wait(10)


# websocket ------------------------------------------------------------------------------------------
PEERS = r"""
import sys, time
from websockets.sync.client import connect
port, n, msg = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conns = [connect(f"ws://127.0.0.1:{port}/twilio", compression=None, legacy=True) for _ in range(n)]
for c in conns:
    for _ in range(5):
        c.send(msg)
print("sent", flush=True)
sys.stdin.read()  # hold the connections until told
for c in conns:
    c.close()
"""


async def websocket_part(legs: int, settings: dict[str, Any]) -> dict[str, float]:
    from websockets.asyncio.server import ServerConnection, serve

    msg = json.dumps({"event": "media", "sequenceNumber": "2", "streamSid": "MZ" + "2" * 32, "media": {
        "track": "inbound", "chunk": "1", "timestamp": "0", "payload": base64.b64encode(b"\xff" * 160).decode()}})
    got = [0]

    async def handler(ws: ServerConnection) -> None:
        async for _ in ws:
            got[0] += 1

    probe = Probe()
    probe.start()
    async with serve(handler, "127.0.0.1", 0, max_size=65536, compression=None, server_header=None,
                     **settings) as server:
        port = server.sockets[0].getsockname()[1]
        peers = await asyncio.create_subprocess_exec(sys.executable, "-c", PEERS, str(port), str(legs), msg,
                                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert peers.stdout is not None and peers.stdin is not None
        await asyncio.wait_for(peers.stdout.readline(), 120)
        deadline = time.monotonic() + 30
        while got[0] < legs * 5 and time.monotonic() < deadline:  # noqa: ASYNC110 (polls a count, bounded)
            await asyncio.sleep(0.05)
        kib, py = probe.per_leg(legs)
        peers.stdin.close()
        await peers.wait()
    return {"ws_rss_kib": kib, "ws_py_kib": py}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--legs", type=int, default=200)
    p.add_argument("--audio-s", type=float, default=6.0)
    p.add_argument("--part", default=",".join(PARTS), help="comma-separated, of: " + ", ".join(PARTS))
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:  # one part in this process: RSS grows from a clean start
        tracemalloc.start()
        print(json.dumps(PARTS[args.part](args.legs, args.audio_s)))
        return 0
    import daemon

    print(f"tree: {Path(daemon.__file__).parent.parent}  legs: {args.legs}  audio: {args.audio_s:g} s  "
          "(KiB per leg: rss = process growth, py = tracemalloc growth)")
    for part in args.part.split(","):
        res = subprocess.run([sys.executable, __file__, "--child", "--part", part, "--legs", str(args.legs),
                              "--audio-s", str(args.audio_s)], capture_output=True, text=True, timeout=600)
        if res.returncode:
            print(f"{part}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
            return 1
        out = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{part:22s} " + "  ".join(f"{k} {v:.1f}" for k, v in out.items()))
    return 0


PARTS: dict[str, Callable[[int, float], dict[str, float]]] = {
    "audio": audio_part,
    "upstream": lambda legs, audio_s: asyncio.run(upstream_part(legs, audio_s)),
    "websocket": lambda legs, _s: asyncio.run(websocket_part(legs, {})),
    "websocket-small": lambda legs, _s: asyncio.run(websocket_part(legs, {"max_queue": 4, "write_limit": 16384})),
}


if __name__ == "__main__":
    sys.exit(main())
