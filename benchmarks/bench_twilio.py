"""N concurrent Twilio calls through the daemon: chunk latency p50/p99, result and alert latency,
daemon CPU and RSS per call.

The daemon runs as its own process with a standalone simulator process as upstream (so the
daemon's CPU is its own), Twilio calls come from `spoofwatch loadgen twilio` processes in real time
(20 ms μ-law frames), every call carries the marked clip on its inbound leg (so every call raises
an alert and alert latency is measured) and, with --track both, clean speech on the outbound leg.
Latencies come from the daemon's own histograms (interpolated like histogram_quantile), plus the
exact share of chunks within the 20 ms SLO bucket.

    .venv/bin/python benchmarks/bench_twilio.py --calls 100 300 --track inbound
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

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
    sink_receiver,
    start_daemon,
    start_simulator,
    stop,
)


def long_clip(src: Path, repeat: int, dst: Path) -> Path:
    with wave.open(str(src)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    with wave.open(str(dst), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.tile(pcm, repeat).tobytes())
    return dst


CONFIG = """
[daemon]
log_format = "json"
log_level = "info"
max_calls = 5000
leg_queue_chunks = 80
drain_timeout_s = 60.0
[http]
listen = "127.0.0.1:0"
[upstream]
target = "127.0.0.1:{sim_port}"
channels = {channels}
max_streams_per_channel = 1000
[ingest.twilio]
listen = "127.0.0.1:0"
max_calls = 5000
[outbox]
path = "{outbox}"
synchronous = "{outbox_sync}"
[[webhook]]
url = "http://127.0.0.1:{hook_port}/hook"
secret_env = "BENCH_WEBHOOK_SECRET"
"""


async def one_run(calls: int, args: argparse.Namespace, work: Path) -> dict[str, float]:

    os.environ["BENCH_WEBHOOK_SECRET"] = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
    marked = long_clip(ROOT / f"daemon/clips/speech_{args.clip}_16k.wav", args.clip_repeat, work / "marked.wav")
    clean = long_clip(ROOT / "daemon/clips/speech_clean_16k.wav", args.clip_repeat, work / "clean.wav")
    sim_port = free_port()
    sim = await start_simulator(sim_port)
    async with sink_receiver() as hook_port:
        cfg_text = CONFIG.split("[[webhook]]")[0] if args.no_webhook else CONFIG
        daemon = await start_daemon(cfg_text.format(sim_port=sim_port, channels=args.channels,
                                                  outbox=work / f"outbox-{calls}.sqlite3", outbox_sync=args.outbox_sync,
                                                  hook_port=hook_port), work)
        if args.pin:
            await pin(daemon.pid, 0)
            await pin(sim.pid, 1)
        try:
            ports = daemon.info["ports"]
            url = f"ws://127.0.0.1:{ports['twilio']}/twilio"
            before = scrape(ports["http"])
            rss0 = rss_bytes(daemon.pid)
            cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
            per_proc = [calls // args.loadgen_procs + (1 if i < calls % args.loadgen_procs else 0)
                        for i in range(args.loadgen_procs)]
            gens = []
            for n in per_proc:
                cmd = [sys.executable, "-m", "daemon.cli", "loadgen", "twilio", "--url", url, "--calls", str(n),
                       "--clip", str(marked), "--track", args.track, "--ramp-s", str(args.ramp_s)]
                if args.track == "both":
                    cmd += ["--other-clip", str(clean)]
                gens.append(await asyncio.create_subprocess_exec(*cmd, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
                                                                 stderr=asyncio.subprocess.STDOUT))
            if args.pin:
                for g in gens:
                    await pin(g.pid, 1)
            peak_rss = rss0
            waits = [asyncio.ensure_future(g.communicate()) for g in gens]
            prev, timeline = buckets(before, "spoofwatch_chunk_latency_seconds"), []
            while not all(w.done() for w in waits):
                peak_rss = max(peak_rss, rss_bytes(daemon.pid))
                await asyncio.sleep(1.0 if args.timeline else 0.5)
                if args.timeline:  # per second: chunks, and how many took over 20 ms
                    now_b = buckets(scrape(ports["http"]), "spoofwatch_chunk_latency_seconds")
                    d = diff_buckets(now_b, prev)
                    total = d[-1][1] if d else 0.0
                    over = total * (1 - share_within(0.02, d)) if total else 0.0
                    timeline.append(f"{time.monotonic() - t0:.0f}s:{total:.0f}/{over:.0f}")
                    prev = now_b
            gen_out = "\n".join(w.result()[0].decode() for w in waits)
            # wait for every call's summary to be committed (final results are in)
            legs = 2 if args.track == "both" else 1
            async with asyncio.timeout(120):
                while sum(v for _, v in samples(scrape(ports["http"]), "spoofwatch_calls_total")) < calls:  # noqa: ASYNC110
                    await asyncio.sleep(0.5)
            cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
            await asyncio.sleep(2.0)  # let the last webhooks land
            after = scrape(ports["http"])
        finally:
            await stop(daemon)
            await stop(sim)
    chunk = diff_buckets(buckets(after, "spoofwatch_chunk_latency_seconds"),
                         buckets(before, "spoofwatch_chunk_latency_seconds"))
    result = diff_buckets(buckets(after, "spoofwatch_result_latency_seconds"),
                          buckets(before, "spoofwatch_result_latency_seconds"))
    alert = diff_buckets(buckets(after, "spoofwatch_alert_latency_seconds"),
                         buckets(before, "spoofwatch_alert_latency_seconds"))
    gc_pause = diff_buckets(buckets(after, "spoofwatch_gc_pause_seconds"),
                            buckets(before, "spoofwatch_gc_pause_seconds"))
    gc_total = gc_pause[-1][1] if gc_pause else 0.0
    gc_over_10ms = gc_total - next((c for le, c in gc_pause if abs(le - 0.01) < 1e-12), gc_total)
    gc_max_le = next((le for le, c in gc_pause if c >= gc_total), 0.0) if gc_total else 0.0
    late = [line for line in gen_out.splitlines() if "late frames" in line]
    drops = sum(v for _, v in samples(after, "spoofwatch_drops_total"))
    alerts = sum(v for lab, v in samples(after, "spoofwatch_alerts_total") if lab.get("type") == "call.spoof_detected")
    wall = t1 - t0
    return {
        "calls": calls, "legs": calls * legs, "chunks": chunk[-1][1] if chunk else 0,
        "chunk_p50_ms": 1000 * quantile(0.5, chunk), "chunk_p99_ms": 1000 * quantile(0.99, chunk),
        "chunk_within_20ms": share_within(0.02, chunk),
        "result_p50_s": quantile(0.5, result), "result_p99_s": quantile(0.99, result),
        "alert_p50_s": quantile(0.5, alert), "alert_p99_s": quantile(0.99, alert), "alerts": alerts,
        "cpu_core_share": (cpu1 - cpu0) / wall, "cpu_ms_per_call_s": 1000 * (cpu1 - cpu0) / wall / calls,
        "rss_kib_per_call": (peak_rss - rss0) / 1024 / calls, "drops": drops,
        "gc_collections": gc_total, "gc_over_10ms": gc_over_10ms, "gc_max_le_s": gc_max_le,
        "loadgen": "; ".join(late)[:200],
        "timeline": " ".join(timeline) if args.timeline else "",
    }


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, nargs="+", default=[100, 300])
    p.add_argument("--track", choices=("inbound", "both"), default="inbound")
    p.add_argument("--clip-repeat", type=int, default=3, help="play the 8 s clip this many times per call")
    p.add_argument("--ramp-s", type=float, default=5.0)
    p.add_argument("--loadgen-procs", type=int, default=1)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--clip", choices=("marked", "clean"), default="marked",
                   help="inbound clip: marked (every call alerts) or clean (no alerts: isolates the alert path)")
    p.add_argument("--outbox-sync", choices=("full", "normal"), default="full", help="[outbox] synchronous")
    p.add_argument("--no-webhook", action="store_true",
                   help="no [[webhook]]: events are committed to the outbox but not delivered")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the daemon to CPU 0 and the simulator, load generator and this script to CPU 1")
    p.add_argument("--timeline", action="store_true",
                   help="also print, per second of the run, chunks written / chunks over 20 ms")
    args = p.parse_args()
    if args.pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})  # the webhook receiver and the scrapes stay off the daemon's CPU
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.calls:
            row = await one_run(n, args, Path(tmp))
            rows.append(row)
            print(row, flush=True)
    print()
    print("| calls | legs | chunks | chunk p50 ms | chunk p99 ms | ≤20 ms | result p50/p99 s | alert p50/p99 s "
          "| alerts | daemon CPU (core) | CPU ms per call·s | RSS KiB/call | drops | GC > 10 ms / all | GC max ≤ ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['calls']} | {r['legs']} | {r['chunks']:.0f} | {r['chunk_p50_ms']:.2f} | {r['chunk_p99_ms']:.2f} | "
              f"{100 * r['chunk_within_20ms']:.1f} % | {r['result_p50_s']:.2f} / {r['result_p99_s']:.2f} | "
              f"{r['alert_p50_s']:.3f} / {r['alert_p99_s']:.3f} | {r['alerts']:.0f} | {r['cpu_core_share']:.2f} | "
              f"{r['cpu_ms_per_call_s']:.2f} | {r['rss_kib_per_call']:.0f} | {r['drops']:.0f} | "
              f"{r['gc_over_10ms']:.0f} / {r['gc_collections']:.0f} | {1000 * r['gc_max_le_s']:.1f} |")
    for r in rows:
        print(f"loadgen @{r['calls']}: {r['loadgen']}")
        if r["timeline"]:
            print(f"timeline @{r['calls']} (s:chunks/over 20 ms): {r['timeline']}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
