"""N concurrent Twilio calls through the daemon: chunk latency p50/p99, alert latency, loss, daemon CPU
and RSS per call, and the rig's own lateness and CPU (see benchmarks/rig.py for the setup).

Every call carries the marked clip on its inbound leg (so every call raises an alert and alert latency
is measured) and, with --track both, clean speech on the outbound leg. Latencies come from the
daemon's own histograms (interpolated like histogram_quantile), plus the exact share of chunks within
the 20 ms SLO bucket.

    .venv/bin/python benchmarks/bench_twilio.py --calls 200 400 600 --track inbound
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.rig import PointOptions, markdown_table, run_point


def add_rig_arguments(p: argparse.ArgumentParser) -> None:
    """Flags every capacity script shares."""
    p.add_argument("--seconds", "--duration-s", dest="seconds", type=float, default=24.0,
                   help="length of each call (default 24)")
    p.add_argument("--channels", type=int, default=2, help="[upstream] channels")
    p.add_argument("--outbox-sync", choices=("full", "normal"), default="full", help="[outbox] synchronous")
    p.add_argument("--no-webhook", action="store_true",
                   help="no [[webhook]]: events are committed to the outbox but not delivered")
    p.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin the daemon to CPU 0 and the simulator, load generator and this script to CPU 1")
    p.add_argument("--timeline", action="store_true",
                   help="also print, per second of the run, chunks written / chunks over 20 ms")


def print_details(rows: list[dict[str, object]]) -> None:
    for r in rows:
        print(f"@{r['ingest']} {r['calls']}: sent {r['sent']} received {r['received']}, alerts {r['alerts']:.0f}, "
              f"result p50/p99 {r['result_p50_ms']:.0f}/{r['result_p99_ms']:.0f} ms, drops {r['drops']:.0f}, "
              f"GC > 10 ms {r['gc_over_10ms']:.0f}/{r['gc_collections']:.0f}, rig CPU {r['rig_cpu_core']:.2f}, "
              f"loadgen errors {r['loadgen_errors']}, warnings {r['warnings']}")
        if r["timeline"]:
            print(f"timeline @{r['calls']} (s:chunks/over 20 ms): {r['timeline']}")


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, nargs="+", default=[100, 300])
    p.add_argument("--track", choices=("inbound", "both"), default="inbound")
    p.add_argument("--ramp-s", type=float, default=5.0)
    p.add_argument("--clip-repeat", type=int, default=None, help="old form of --seconds: the 8 s clip N times")
    p.add_argument("--loadgen-procs", type=int, default=1)
    p.add_argument("--clip", choices=("marked", "clean"), default="marked",
                   help="inbound clip: marked (every call alerts) or clean (no alerts: isolates the alert path)")
    add_rig_arguments(p)
    args = p.parse_args()
    if args.clip_repeat:
        args.seconds = 8.0 * args.clip_repeat
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.calls:
            o = PointOptions("twilio", n, seconds=args.seconds, ramp_s=args.ramp_s, track=args.track, clip=args.clip,
                             channels=args.channels, loadgen_procs=args.loadgen_procs, outbox_sync=args.outbox_sync,
                             webhook=not args.no_webhook, pin=args.pin, timeline=args.timeline)
            row = await run_point(o, Path(tmp))
            rows.append(row)
            print(row, flush=True)
    print()
    print(markdown_table(rows))
    print_details(rows)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
