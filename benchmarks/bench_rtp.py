"""N concurrent RTP (PCMU, 20 ms) calls through the daemon: packets lost, chunk latency p50/p99, alert
latency, daemon CPU and RSS per call, and the rig's own lateness and CPU (see benchmarks/rig.py),
optionally with asyncio's stock datagram transport (256 KiB per recvfrom) side by side (--stock).

Packets lost = packets sent − packets the daemon counted as received (less one RTCP BYE per stream).

    .venv/bin/python benchmarks/bench_rtp.py --calls 250 500 1000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_twilio import add_rig_arguments, print_details
from benchmarks.rig import PointOptions, markdown_table, run_point


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, nargs="+", default=[250, 500, 1000])
    p.add_argument("--stock", action="store_true", help="also run each size with the stock 256 KiB recvfrom")
    p.add_argument("--sockets", choices=("one", "per-call"), default="one", help="loadgen rtp --sockets")
    p.add_argument("--ramp-s", type=float, default=5.0, help="stream starts spread over this (loadgen rtp --ramp-s)")
    add_rig_arguments(p)
    p.set_defaults(channels=4)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.calls:
            for max_bytes in ([2048, 0] if args.stock else [2048]):
                o = PointOptions("rtp", n, seconds=args.seconds, channels=args.channels, outbox_sync=args.outbox_sync,
                                 webhook=not args.no_webhook, pin=args.pin, timeline=args.timeline,
                                 rtp_max_bytes=max_bytes, rtp_sockets=args.sockets, ramp_s=args.ramp_s)
                row = await run_point(o, Path(tmp))
                if not max_bytes:
                    row["ingest"] = "rtp (stock recvfrom)"
                rows.append(row)
                print(row, flush=True)
    print()
    print(markdown_table(rows))
    print_details(rows)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
