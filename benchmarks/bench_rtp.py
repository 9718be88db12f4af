"""N concurrent RTP (PCMU, 20 ms) calls through the daemon to a standalone simulator: packets lost,
chunk latency p50/p99, daemon CPU and RSS per call, with the patched datagram transport
(recvfrom 2048 bytes) and asyncio's stock one (256 KiB per recvfrom) side by side in one run.

The daemon, the simulator and the load generator are separate processes; `taskset` pins the daemon
to CPU 0 when available so "per core" means one core. Packets lost = packets sent − packets the
daemon counted as received (plus what its jitter buffers declared lost).

    .venv/bin/python benchmarks/bench_rtp.py --calls 250 500 1000 --duration-s 20
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    ROOT,
    buckets,
    cpu_seconds,
    diff_buckets,
    free_port,
    pin,
    quantile,
    rss_bytes,
    samples,
    scrape,
    share_within,
    start_daemon,
    start_simulator,
    stop,
)

CONFIG = """
[daemon]
log_format = "json"
log_level = "info"
max_calls = 5000
drain_timeout_s = 30.0
[http]
listen = "127.0.0.1:0"
[upstream]
target = "127.0.0.1:{sim_port}"
channels = 4
max_streams_per_channel = 1000
[ingest.twilio]
enabled = false
[ingest.rtp]
enabled = true
port_min = {base}
port_max = {top}
max_calls = 5000
inactivity_timeout_ms = 2000
datagram_max_bytes = {max_bytes}
control_listen = "127.0.0.1:0"
[outbox]
path = "{outbox}"
"""


async def one_run(calls: int, max_bytes: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    sim_port = free_port()
    sim = await start_simulator(sim_port)
    base = 20000
    daemon = await start_daemon(CONFIG.format(sim_port=sim_port, base=base, top=base + 2 * calls + 1,
                                              max_bytes=max_bytes, outbox=work / f"o-{calls}-{max_bytes}.db"), work)
    await pin(daemon.pid, 0)
    try:
        http = daemon.info["ports"]["http"]
        rss0 = rss_bytes(daemon.pid)
        before = scrape(http)
        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        gen = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon.cli", "loadgen", "rtp", "--port-base", str(base), "--calls", str(calls),
            "--clip", "marked", "--duration-s", str(args.duration_s), cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        await pin(gen.pid, 1)
        await pin(sim.pid, 1)
        peak = rss0
        waiter = asyncio.ensure_future(gen.communicate())
        steady_cpu: list[tuple[float, float]] = []
        while not waiter.done():
            await asyncio.sleep(0.5)
            peak = max(peak, rss_bytes(daemon.pid))
            steady_cpu.append((time.monotonic(), cpu_seconds(daemon.pid)))
        out = waiter.result()[0].decode()
        cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        async with asyncio.timeout(120):
            while sum(v for _, v in samples(scrape(http), "spoofwatch_calls_total")) < calls:  # noqa: ASYNC110
                await asyncio.sleep(0.5)
        after = scrape(http)
    finally:
        await stop(daemon)
        await stop(sim)
    sent = int(next(line.split()[-1] for line in out.splitlines() if line.startswith("packets sent")))
    received = sum(v for lab, v in samples(after, "spoofwatch_frames_received_total") if lab.get("ingest") == "rtp")
    received -= sum(v for lab, v in samples(before, "spoofwatch_frames_received_total") if lab.get("ingest") == "rtp")
    rtcp = calls  # one BYE per stream is counted as a received frame
    chunk = diff_buckets(buckets(after, "spoofwatch_chunk_latency_seconds"),
                         buckets(before, "spoofwatch_chunk_latency_seconds"))
    late = next((line for line in out.splitlines() if line.startswith("late ticks")), "")
    mid = [c for t, c in steady_cpu if t0 + 3 <= t <= t1 - 1]
    mid_t = [t for t, c in steady_cpu if t0 + 3 <= t <= t1 - 1]
    steady = (mid[-1] - mid[0]) / (mid_t[-1] - mid_t[0]) if len(mid) > 2 else (cpu1 - cpu0) / (t1 - t0)
    return {
        "calls": calls, "max_bytes": max_bytes, "sent": sent, "lost": max(0, sent + rtcp - int(received)),
        "chunk_p50_ms": 1000 * quantile(0.5, chunk), "chunk_p99_ms": 1000 * quantile(0.99, chunk),
        "within_20ms": share_within(0.02, chunk), "cpu_core": steady, "cpu_us_per_packet":
        1e6 * steady / (calls * 50) if calls else 0, "rss_kib_per_call": (peak - rss0) / 1024 / calls,
        "drops": sum(v for _, v in samples(after, "spoofwatch_drops_total")), "loadgen": late,
    }


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, nargs="+", default=[250, 500, 1000])
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--stock", action="store_true", help="also run each size with the stock 256 KiB recvfrom")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.calls:
            for max_bytes in ([2048, 0] if args.stock else [2048]):
                row = await one_run(n, max_bytes, args, Path(tmp))
                print(row, flush=True)
                rows.append(row)
    print()
    print("| calls | recvfrom | packets sent | lost | chunk p50 ms | chunk p99 ms | ≤20 ms | daemon CPU (core) "
          "| µs/packet | RSS KiB/call | drops |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        kind = "2048 B" if r["max_bytes"] else "stock 256 KiB"
        print(f"| {r['calls']} | {kind} | {r['sent']} | {r['lost']} | {r['chunk_p50_ms']:.2f} "
              f"| {r['chunk_p99_ms']:.2f} "
              f"| {100 * r['within_20ms']:.1f} % | {r['cpu_core']:.2f} | {r['cpu_us_per_packet']:.1f} "
              f"| {r['rss_kib_per_call']:.0f} | {r['drops']:.0f} |")
    for r in rows:
        print(f"loadgen @{r['calls']}/{r['max_bytes']}: {r['loadgen']}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
