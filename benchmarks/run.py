"""Capacity per core, in one command: a ramp of concurrent calls for each ingest, the all-alerting
point, and the side-by-side baselines, measured in one run on one machine.

Each point is one daemon pinned to CPU 0 with the simulator and the load generator on CPU 1 (see
benchmarks/rig.py). Writes benchmarks/results/<date>.json (every number, plus the machine and the
commit) and a Markdown table, printed and written between the markers in benchmarks/README.md.
The knee of an ingest is the most calls with chunk p99 ≤ 20 ms and no loss.

    .venv/bin/python benchmarks/run.py                                   # the defaults below
    .venv/bin/python benchmarks/run.py --twilio 200 400 600 --rtp 250 500 1000 --alerts 500
    .venv/bin/python benchmarks/run.py --twilio --rtp --alerts 0 --no-baselines --whip 50 100 200   # WHIP only
    .venv/bin/python benchmarks/run.py --twilio --rtp 50 --alerts 0 --seconds 10 --no-baselines --no-readme
    (--floor-calls 0 skips the library-floor measurement, benchmarks/bench_floor.py)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_baselines import baselines_markdown, rtp_side_by_side, twilio_side_by_side
from benchmarks.bench_floor import floor_markdown
from benchmarks.common import ROOT
from benchmarks.rig import PointOptions, knee, markdown_table, run_point

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- benchmarks/run.py: begin -->", "<!-- benchmarks/run.py: end -->"
TARGETS = {"twilio": 600, "rtp": 1000, "whip": 200}


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release(),
            "commit": commit, "dirty": dirty, "loadavg_at_start": os.getloadavg()}


def report(result: dict[str, Any]) -> str:
    rows = result["points"]
    lines = [f"Run {result['started']} on {result['machine']['cpu']} ({result['machine']['cpus']} CPUs), "
             f"commit {result['machine']['commit'][:10]}{' (dirty)' if result['machine']['dirty'] else ''}, "
             f"{result['args']['seconds']:.0f} s calls; load average at start "
             f"{', '.join(f'{x:.1f}' for x in result['machine']['loadavg_at_start'])}.", "", markdown_table(rows), ""]
    for ingest, target in TARGETS.items():
        if any(r["ingest"] == ingest for r in rows):
            k = result["knee"].get(ingest)
            lines.append(f"- **{ingest} knee**: {k if k is not None else 'none'} calls with chunk p99 ≤ 20 ms and "
                         f"no loss (target {target}).")
    alerts = [r for r in rows if r["ingest"] == "twilio-alerts"]
    for r in alerts:
        lines.append(f"- **alerts**: {r['calls']} calls, {r['alerts']:.0f} alerts, alert p99 "
                     f"{r['alert_p99_ms']:.0f} ms (target ≤ 50 ms).")
    for r in rows:
        if r["ingest"] == "whip":
            steady = r.get("loadgen_cpu_core_steady")
            lines.append(f"- **whip {r['calls']}**: daemon {1000 * r['daemon_cpu_core'] / r['calls']:.1f} ms CPU per "
                         f"call·s, aiortc track queue peak {r.get('track_queue_peak')} (of "
                         f"{r.get('whip_sessions_seen')} sessions' logs seen), "
                         f"{r.get('whip_unreceived_per_call', float('nan')):.1f} packets per call not decoded (up to "
                         f"5 stay in aiortc's jitter buffer at DELETE: not loss); load generator "
                         f"{'–' if steady is None else f'{steady:.2f}'} core with all publishers up.")
    worst = max(rows, key=lambda r: r["loadgen_cpu_core"] + r["simulator_cpu_core"], default=None)
    if worst is not None:
        lines.append(f"- **rig**: at most {worst['loadgen_cpu_core'] + worst['simulator_cpu_core']:.2f} core "
                     f"(load generator + simulator, {worst['ingest']} {worst['calls']} calls); load generator "
                     f"at most {max(r['loadgen_max_late_ms'] for r in rows):.1f} ms late.")
    for r in rows:
        if r.get("warnings"):
            lines.append(f"- **check {r['ingest']} {r['calls']}**: {'; '.join(r['warnings'])}.")
    base = result.get("baselines") or {}
    if base:
        lines += ["", "Side by side, same run:", "", baselines_markdown(base.get("rtp", []), base.get("twilio"))]
        naive = [b["naive"] for b in base.get("rtp", []) if b["naive"]["loss"] == 0]
        if naive:  # the naive receiver's CPU per call is flat in load until it saturates: compare at each point
            n = naive[-1]
            per = ", ".join(f"{r['calls']}: {1000 * r['daemon_cpu_core'] / r['calls']:.2f} ms "
                            f"({n['cpu_ms_per_call_s'] * r['calls'] / max(1000 * r['daemon_cpu_core'], 1e-9):.1f}×)"
                            for r in rows if r["ingest"] == "rtp")
            lines += ["", f"- **RTP CPU per call·s**: naive receiver {n['cpu_ms_per_call_s']:.2f} ms (at {n['calls']} "
                      f"calls, no loss: {1000 / n['cpu_ms_per_call_s']:.0f} calls per core); spoofwatch at each RTP "
                      f"point (ratio): {per}."]
    return "\n".join(lines + floor_report(result))


def library_floor(calls: int) -> dict[str, float]:
    """bench_floor.py in its own process (it pins itself to CPU 0 and its peers to CPU 1)."""
    res = subprocess.run([sys.executable, str(HERE / "bench_floor.py"), "--calls", str(calls), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    if res.returncode:
        raise RuntimeError(f"bench_floor.py failed:\n{res.stderr[-2000:]}")
    out: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def floor_report(result: dict[str, Any]) -> list[str]:
    """The floor table, and each point's measured CPU per call·s set against its ingest's floor."""
    floor = result.get("floor")
    if not floor:
        return []
    lines = ["", floor_markdown(floor), ""]
    for ingest in ("rtp", "twilio"):
        ms = floor[f"{ingest}_ms_per_call_s"]
        measured = [f"{r['calls']}: {r['daemon_cpu_core'] / r['calls'] * 1000:.2f} ms"
                    for r in result["points"] if r["ingest"] == ingest and r["calls"]]
        if measured:
            lines.append(f"- **{ingest}**: measured daemon CPU per call·s at each point ({', '.join(measured)}) "
                         f"against a floor of {ms:.2f} ms from the libraries alone.")
    return lines


def write_readme(text: str, readme: Path = HERE / "README.md") -> None:
    """Put `text` between the markers in the README (a new section at the end the first time)."""
    body = readme.read_text() if readme.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in body and END in body:
        head, rest = body.split(BEGIN, 1)
        body = head + block + rest.split(END, 1)[1]
    else:
        body = body.rstrip("\n") + "\n\n## Capacity per core: latest `benchmarks/run.py`\n\n" + block + "\n"
    readme.write_text(body)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--twilio", type=int, nargs="*", default=[200, 400, 600], help="Twilio ramp (calls, one track)")
    p.add_argument("--rtp", type=int, nargs="*", default=[250, 500, 1000], help="RTP PCMU ramp (calls)")
    p.add_argument("--whip", type=int, nargs="*", default=[],
                   help="WHIP ramp (aiortc publishers, pre-encoded Opus over DTLS-SRTP), e.g. 50 100 200")
    p.add_argument("--whip-procs", type=int, default=1,
                   help="`loadgen whip` processes sharing the rig's CPU (the calls split over them)")
    p.add_argument("--whip-ramp-s", type=float, default=5.0, help="WHIP publisher starts spread over this")
    p.add_argument("--alerts", type=int, default=500, help="all-alerting Twilio point (0: skip)")
    p.add_argument("--seconds", type=float, default=24.0, help="length of each call")
    p.add_argument("--baseline-rtp-calls", type=int, nargs="*", default=[50],
                   help="loads of the naive RTP receiver comparison (spoofwatch's side reuses the RTP ramp "
                        "point of the same size when there is one)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the Twilio stage comparison")
    p.add_argument("--floor-calls", type=int, default=1000,
                   help="legs of the library-floor measurement (benchmarks/bench_floor.py; 0: skip)")
    p.add_argument("--no-baselines", dest="baselines", action="store_false")
    p.add_argument("--no-readme", dest="readme", action="store_false", help="do not rewrite benchmarks/README.md")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args()
    started = dt.datetime.now(dt.UTC)
    result: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": machine(),
                              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "points": [], "knee": {}}
    plan = ([PointOptions("twilio", n, seconds=args.seconds, pin=args.pin) for n in args.twilio]
            + [PointOptions("rtp", n, seconds=args.seconds, channels=4, pin=args.pin) for n in args.rtp]
            + [PointOptions("whip", n, seconds=args.seconds, ramp_s=args.whip_ramp_s, loadgen_procs=args.whip_procs,
                            pin=args.pin) for n in args.whip]
            + ([PointOptions("twilio", args.alerts, seconds=args.seconds, pin=args.pin)] if args.alerts else []))
    with tempfile.TemporaryDirectory() as tmp:
        for i, o in enumerate(plan):
            row = await run_point(o, Path(tmp))
            if args.alerts and i == len(plan) - 1:
                row["ingest"] = "twilio-alerts"
            result["points"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "timeline"}), flush=True)
        if args.baselines:
            by_calls = {r["calls"]: r for r in result["points"] if r["ingest"] == "rtp"}
            result["baselines"] = {
                "twilio": twilio_side_by_side(Path(tmp), args.repeats),
                "rtp": [await rtp_side_by_side(n, args.seconds, Path(tmp), pin_cpus=args.pin,
                                               spoofwatch_row=by_calls.get(n)) for n in args.baseline_rtp_calls],
            }
    if args.floor_calls:
        result["floor"] = library_floor(args.floor_calls)
    for ingest in TARGETS:
        result["knee"][ingest] = knee(result["points"], ingest)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{started:%Y-%m-%d}.json"
    if out.exists():
        out = args.out / f"{started:%Y-%m-%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    text = report(result)
    print()
    print(text)
    print(f"\nwritten: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    if args.readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
