"""CPU per call for every media-fork dialect, side by side in one run (issue 14).

One daemon with every dialect enabled is pinned to CPU 0; a standalone simulator and the load
generator are pinned to CPU 1. For each dialect in turn, `spoofwatch loadgen <dialect>` plays N
real-time calls (the marked clip on the first party, the clean clip on the other where the dialect has
two legs, both looped to --seconds); the daemon's CPU is sampled over the window in which every call is
up, and its chunk latency from its own histogram over the same point. Twilio runs first, as the
reference every other dialect is compared with.

    .venv/bin/python benchmarks/bench_forks.py --calls 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (
    CREDS,
    ROOT,
    buckets,
    cpu_seconds,
    diff_buckets,
    free_port,
    pin,
    quantile,
    samples,
    scrape,
    start_daemon,
    start_simulator,
    stop,
)
from benchmarks.rig import long_clip

API_KEY = "bench-audiohook-key"
DIALECTS = ("twilio", "telnyx", "plivo", "exotel", "vonage", "freeswitch", "jambonz", "asterisk", "audiohook",
            "audiosocket")
#: analysed legs per call as the load generator plays it (the others carry one leg)
LEGS = {"twilio": 2, "telnyx": 2, "plivo": 2, "freeswitch": 2, "audiohook": 2}
#: the ingest label of each dialect (asterisk's config section is asterisk_ws)
LABEL = {"asterisk": "asterisk_ws"}


def config_text(sim_port: int, outbox: Path) -> str:
    sections = "\n".join(f"[ingest.{LABEL.get(d, d)}]\nenabled = true\nmax_calls = 5000"
                         for d in DIALECTS if d not in ("twilio", "audiosocket"))
    return f"""
[daemon]
log_format = "json"
max_calls = 5000
[http]
listen = "127.0.0.1:0"
[upstream]
target = "127.0.0.1:{sim_port}"
max_streams_per_channel = 1000
[ingest.websocket]
listen = "127.0.0.1:0"
[ingest.twilio]
max_calls = 5000
[ingest.whip]
enabled = false
{sections}
[ingest.audiosocket]
enabled = true
listen = "127.0.0.1:0"
max_calls = 5000
[outbox]
path = "{outbox}"
"""


def loadgen_args(dialect: str, ports: dict[str, int], calls: int, marked: Path, clean: Path) -> list[str]:
    common = ["--calls", str(calls), "--clip", str(marked), "--ramp-s", "5"]
    if dialect == "audiosocket":
        return ["audiosocket", "--port", str(ports["audiosocket"]), *common]
    url = f"ws://127.0.0.1:{ports['websocket']}/{dialect}"
    own = {"twilio": ["--track", "both"], "audiohook": ["--api-key", API_KEY, "--client-secret", ""]}
    extra = own.get(dialect, [])
    if LEGS.get(dialect, 1) == 2:
        extra = [*extra, "--other-clip", str(clean)]
    return [dialect, "--url", url, *common, *extra]


async def one_dialect(dialect: str, daemon_pid: int, http: int, ports: dict[str, int], calls: int, seconds: float,
                      marked: Path, clean: Path) -> dict[str, object]:
    before = scrape(http)
    cmd = [sys.executable, "-m", "daemon.cli", "loadgen", *loadgen_args(dialect, ports, calls, marked, clean)]
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env={**os.environ, **CREDS})
    await pin(proc.pid, 1)
    t0 = time.monotonic()
    await asyncio.sleep(5 + 2)  # every call started (ramp) and settled: the steady window begins
    cpu0, w0 = cpu_seconds(daemon_pid), time.monotonic()
    await asyncio.sleep(max(1.0, seconds - (time.monotonic() - t0) - 1.0))
    cpu1, w1 = cpu_seconds(daemon_pid), time.monotonic()
    out, _ = await proc.communicate()
    for _ in range(600):  # the calls' final results and summaries: every call ended before the "after" scrape
        if sum(v for _, v in samples(scrape(http), "spoofwatch_calls_active")) == 0:
            break
        await asyncio.sleep(0.1)
    after = scrape(http)
    lat = diff_buckets(buckets(after, "spoofwatch_chunk_latency_seconds"),
                       buckets(before, "spoofwatch_chunk_latency_seconds"))
    label = LABEL.get(dialect, dialect)
    alerted = sum(v for lab, v in samples(after, "spoofwatch_calls_total")
                  if lab.get("ingest") == label and lab.get("outcome") == "alerted") - \
        sum(v for lab, v in samples(before, "spoofwatch_calls_total")
            if lab.get("ingest") == label and lab.get("outcome") == "alerted")
    core = (cpu1 - cpu0) / (w1 - w0)
    legs = LEGS.get(dialect, 1)
    return {"dialect": dialect, "calls": calls, "legs_per_call": legs, "rc": proc.returncode,
            "alerted": int(alerted), "daemon_core": core, "ms_per_call_s": 1000 * core / calls,
            "ms_per_leg_s": 1000 * core / (calls * legs),
            "chunk_p50_ms": 1000 * quantile(0.5, lat), "chunk_p99_ms": 1000 * quantile(0.99, lat),
            "tail": out.decode(errors="replace").strip().splitlines()[-1:]}


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--seconds", type=float, default=20.0, help="length of each call (the clips are looped)")
    p.add_argument("--dialects", nargs="*", default=list(DIALECTS))
    args = p.parse_args()
    os.environ["SPOOFWATCH_AUDIOHOOK_API_KEY"] = API_KEY
    os.environ["SPOOFWATCH_AUDIOHOOK_CLIENT_SECRET"] = ""  # unsigned upgrades: the key alone is checked
    os.environ.setdefault("TWILIO_AUTH_TOKEN", "local-dev-twilio-token")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        marked = long_clip(ROOT / "daemon/clips/speech_marked_16k.wav", args.seconds, work / "marked.wav")
        clean = long_clip(ROOT / "daemon/clips/speech_clean_16k.wav", args.seconds, work / "clean.wav")
        sim_port = free_port()
        sim = await start_simulator(sim_port)
        await pin(sim.pid, 1)
        daemon = await start_daemon(config_text(sim_port, work / "outbox.sqlite3"), work)
        await pin(daemon.pid, 0)
        ports = {k: int(v) for k, v in daemon.info["ports"].items()}
        rows = []
        try:
            for dialect in args.dialects:
                row = await one_dialect(dialect, daemon.pid, ports["http"], ports, args.calls, args.seconds,
                                        marked, clean)
                print(row, flush=True)
                rows.append(row)
        finally:
            await stop(daemon)
            await stop(sim)
    ref = next((r for r in rows if r["dialect"] == "twilio"), None)
    print(f"\n{args.calls} calls per dialect, {args.seconds:.0f} s calls, daemon pinned to CPU 0, rig on CPU 1\n")
    print("| dialect | legs per call | calls alerted | daemon CPU (core) | ms CPU per leg·s | vs Twilio "
          "| chunk p50 ms | chunk p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_leg = float(r["ms_per_leg_s"])  # type: ignore[arg-type]
        ratio = f"{per_leg / float(ref['ms_per_leg_s']):.2f}×" if ref else "–"  # type: ignore[arg-type]
        print(f"| {r['dialect']} | {r['legs_per_call']} | {r['alerted']}/{r['calls']} | "
              f"{float(r['daemon_core']):.2f} | {per_leg:.2f} | {ratio} | "  # type: ignore[arg-type]
              f"{float(r['chunk_p50_ms']):.1f} | {float(r['chunk_p99_ms']):.1f} |")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
