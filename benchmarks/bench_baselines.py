"""Side by side, in one run: spoofwatch against what a Python user would otherwise build.

1. RTP: the naive receiver (benchmarks/naive_rtp_receiver.py: a thread per call, per-packet μ-law
   decode and `scipy.signal.resample_poly`) and spoofwatch's daemon, each alone on CPU 0, fed the same
   real-time PCMU streams by `spoofwatch loadgen rtp` on CPU 1. Compared: CPU per call-second (and
   loss). spoofwatch also streams every chunk upstream and runs the policy; the baseline does not.
2. Twilio: pipecat's `TwilioFrameSerializer.deserialize` (JSON, base64, μ-law, soxr to 16 kHz, one
   frame object) against spoofwatch's `TwilioStreamParser.receive_text` + `LegAudioPath.push` (parse,
   decode, resample, 8000-byte chunks) on the same recorded media messages, µs per message, repeated.
   pipecat-ai pins protobuf 6 and soxr 1.0 (the project pins protobuf 7 and soxr 1.1), so it lives
   in its own venv, benchmarks/.venv-pipecat, made on first use from benchmarks/requirements-pipecat.txt.

    .venv/bin/python benchmarks/bench_baselines.py [--rtp-calls 50] [--repeats 3] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, cpu_seconds, pin
from benchmarks.rig import PointOptions, long_clip, run_point

HERE = Path(__file__).resolve().parent
PIPECAT_VENV = HERE / ".venv-pipecat"
NAIVE_PORT_BASE = 30000
PASSES = 3  # the Twilio stage: best of this many passes over the messages, per repeat, on each side


# RTP: naive receiver -------------------------------------------------------------------------------
async def naive_rtp_point(calls: int, seconds: float, work: Path, *, pin_cpus: bool = True) -> dict[str, Any]:
    """The naive receiver under `calls` real-time PCMU streams: its CPU (steady state) and loss."""
    if pin_cpus and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})
    recv = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "naive_rtp_receiver.py"), "--port-base", str(NAIVE_PORT_BASE),
        "--calls", str(calls), stdout=asyncio.subprocess.PIPE)
    try:
        assert recv.stdout is not None
        async with asyncio.timeout(60):
            json.loads(await recv.stdout.readline())  # {"ready": true}
        if pin_cpus:
            await pin(recv.pid, 0)
        clip = long_clip(ROOT / "daemon/clips/speech_marked_16k.wav", seconds, work / "naive-marked.wav")
        gen = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "daemon.cli", "loadgen", "rtp", "--port-base", str(NAIVE_PORT_BASE), "--calls",
            str(calls), "--clip", str(clip), "--duration-s", str(seconds), "--no-bye", cwd=str(ROOT),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        if pin_cpus:
            await pin(gen.pid, 1)
        t0 = time.monotonic()
        waiter = asyncio.ensure_future(gen.communicate())
        trace: list[tuple[float, float]] = []
        while not waiter.done():
            await asyncio.sleep(0.5)
            trace.append((time.monotonic(), cpu_seconds(recv.pid)))
        out = waiter.result()[0].decode(errors="replace")
        await asyncio.sleep(1.0)  # let the receiver drain its sockets
    finally:
        if recv.returncode is None:
            recv.terminate()
        stats_line = await recv.stdout.readline() if recv.stdout is not None else b""
        await recv.wait()
    stats = json.loads(stats_line or b"{}")
    sent = sum(int(line.split()[-1]) for line in out.splitlines() if line.startswith("packets sent"))
    mid = [(t, c) for t, c in trace if t0 + 2.3 <= t <= t0 + seconds - 1.0]
    core = (mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0]) if len(mid) > 2 else float("nan")
    return {"calls": calls, "cpu_core": core, "cpu_ms_per_call_s": 1000 * core / calls, "sent": sent,
            "received": stats.get("packets", 0), "loss": max(0, sent - stats.get("packets", 0))}


async def rtp_side_by_side(calls: int, seconds: float, work: Path, *, pin_cpus: bool = True,
                           spoofwatch_row: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both receivers at the same load; `spoofwatch_row` reuses a ramp point of the same call count."""
    naive = await naive_rtp_point(calls, seconds, work, pin_cpus=pin_cpus)
    sw = spoofwatch_row or await run_point(PointOptions("rtp", calls, seconds=seconds, channels=4, pin=pin_cpus), work)
    sw_ms = 1000 * sw["daemon_cpu_core"] / calls
    return {"calls": calls, "naive": naive, "spoofwatch_cpu_core": sw["daemon_cpu_core"],
            "spoofwatch_cpu_ms_per_call_s": sw_ms, "spoofwatch_loss": sw["loss"],
            "ratio": naive["cpu_ms_per_call_s"] / sw_ms if sw_ms else float("nan")}


# Twilio: pipecat's deserialize vs spoofwatch's parse + audio path ----------------------------------
def record_messages(path: Path, seconds: float = 60.0) -> int:
    """~50 media messages per second of the marked clip, as the load generator sends them; JSON lines,
    the opening (`connected`, `start`) first."""
    from daemon.audio.codecs import encode_ulaw
    from daemon.loadgen.twilio import load_clip_8k, twilio_messages

    clip = long_clip(ROOT / "daemon/clips/speech_marked_16k.wav", seconds, path.with_suffix(".wav"))
    ulaw = encode_ulaw(load_clip_8k(str(clip)))[: int(seconds * 8000)]
    opening, ticks, _ = twilio_messages({"inbound": ulaw}, call_sid="CA" + "1" * 32, stream_sid="MZ" + "2" * 32)
    media = [m for tick in ticks for m in tick]
    path.write_text("\n".join(opening + media) + "\n")
    return len(media)


def spoofwatch_stage(path: Path, profile: bool = False) -> dict[str, float | str]:
    """µs per media message (best of PASSES): the whole stage, and json.loads / parser alone for reference."""
    from daemon.audio.path import LegAudioPath
    from daemon.ingest.twilio.protocol import Media, TwilioStreamParser
    from daemon.model import AudioFormat, Codec

    lines = path.read_text().splitlines()
    opening, media = lines[:2], lines[2:]

    def run(with_audio: bool) -> float:
        parser = TwilioStreamParser()
        for m in opening:
            parser.receive_text(m, 0.0)
        leg = LegAudioPath(AudioFormat(Codec.PCMU, 8000))
        t = time.perf_counter()
        for i, text in enumerate(media):
            for ev in parser.receive_text(text, i * 0.02):
                if with_audio and type(ev) is Media:
                    leg.push(ev.payload)
        return (time.perf_counter() - t) / len(media) * 1e6

    loads_us = float("inf")
    for _ in range(PASSES):
        t = time.perf_counter()
        for text in media:
            json.loads(text)
        loads_us = min(loads_us, (time.perf_counter() - t) / len(media) * 1e6)
    out: dict[str, float | str] = {"stage_us": min(run(True) for _ in range(PASSES)),
                                   "parser_only_us": min(run(False) for _ in range(PASSES)), "json_loads_us": loads_us}
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            run(True)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        out["profile"] = buf.getvalue()
    return out


PIPECAT_STAGE = r"""
import asyncio, json, sys, time, types
from pipecat.serializers.twilio import TwilioFrameSerializer
lines = open(sys.argv[1]).read().splitlines()
media = lines[2:]
async def one_pass():
    ser = TwilioFrameSerializer("MZ" + "2" * 32, params=TwilioFrameSerializer.InputParams(
        twilio_sample_rate=8000, sample_rate=16000, auto_hang_up=False))
    await ser.setup(types.SimpleNamespace(audio_in_sample_rate=16000))
    t = time.perf_counter()
    n = 0
    for text in media:
        frame = await ser.deserialize(text)
        n += frame is not None
    return (time.perf_counter() - t) / len(media) * 1e6, n
async def main():
    runs = [await one_pass() for _ in range(int(sys.argv[2]))]
    print(json.dumps({"stage_us": min(us for us, _ in runs), "frames": runs[0][1]}))
asyncio.run(main())
"""


def ensure_pipecat_venv() -> Path:
    """benchmarks/.venv-pipecat with pipecat-ai (pinned in requirements-pipecat.txt), made once."""
    py = PIPECAT_VENV / "bin" / "python"
    if not py.exists():
        import venv

        venv.create(PIPECAT_VENV, with_pip=True)
        (PIPECAT_VENV / ".gitignore").write_text("*\n")
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "-r", str(HERE / "requirements-pipecat.txt")],
                       check=True)
    return py


def pipecat_stage(path: Path) -> dict[str, float]:
    py = ensure_pipecat_venv()
    res = subprocess.run([str(py), "-c", PIPECAT_STAGE, str(path), str(PASSES)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "LOGURU_LEVEL": "WARNING"})
    if res.returncode:
        raise RuntimeError(f"pipecat stage failed:\n{res.stderr[-2000:]}")
    out: dict[str, float] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def twilio_side_by_side(work: Path, repeats: int = 3, profile: bool = False) -> dict[str, Any]:
    path = work / "twilio-media.jsonl"
    n = record_messages(path)
    runs = []
    for r in range(repeats):
        sw = spoofwatch_stage(path, profile=profile and r == repeats - 1)
        pc = pipecat_stage(path)
        runs.append({"spoofwatch_us": sw["stage_us"], "spoofwatch_parser_only_us": sw["parser_only_us"],
                     "json_loads_us": sw["json_loads_us"], "pipecat_us": pc["stage_us"],
                     "ratio": float(pc["stage_us"]) / float(sw["stage_us"]), "profile": sw.get("profile", "")})
    return {"messages": n, "runs": runs}


def baselines_markdown(rtp: list[dict[str, Any]], twilio: dict[str, Any] | None) -> str:
    lines = []
    if rtp:
        lines += ["| RTP calls | naive CPU (core) | naive ms/call·s | naive loss | spoofwatch CPU (core) "
                  "| spoofwatch ms/call·s | spoofwatch loss | ratio |", "|---|---|---|---|---|---|---|---|"]
        for r in rtp:
            nv = r["naive"]
            lines.append(f"| {r['calls']} | {nv['cpu_core']:.2f} | {nv['cpu_ms_per_call_s']:.2f} | {nv['loss']} "
                         f"| {r['spoofwatch_cpu_core']:.2f} | {r['spoofwatch_cpu_ms_per_call_s']:.2f} "
                         f"| {r['spoofwatch_loss']} | {r['ratio']:.1f}× |")
        lines.append("")
    if twilio:
        lines += [f"Twilio stage, {twilio['messages']} recorded media messages, µs per message:", "",
                  "| run | pipecat deserialize | spoofwatch parse+decode+resample+chunk | of which parser "
                  "| json.loads alone | ratio |", "|---|---|---|---|---|---|"]
        for i, r in enumerate(twilio["runs"], 1):
            lines.append(f"| {i} | {r['pipecat_us']:.1f} | {r['spoofwatch_us']:.1f} | "
                         f"{r['spoofwatch_parser_only_us']:.1f} | {r['json_loads_us']:.1f} | {r['ratio']:.1f}× |")
    return "\n".join(lines)


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rtp-calls", type=int, nargs="*", default=[50],
                   help="loads for the RTP comparison (the naive receiver needs ~15 ms CPU per call·s: keep it "
                        "under a core, or its loss column says it fell behind)")
    p.add_argument("--seconds", type=float, default=24.0)
    p.add_argument("--repeats", type=int, default=3, help="repeats of the Twilio stage comparison")
    p.add_argument("--no-twilio", action="store_true")
    p.add_argument("--profile", action="store_true", help="cProfile spoofwatch's Twilio stage (last repeat)")
    p.add_argument("--no-pin", dest="pin", action="store_false")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        twilio = None if args.no_twilio else twilio_side_by_side(Path(tmp), args.repeats, args.profile)
        rtp = [await rtp_side_by_side(n, args.seconds, Path(tmp), pin_cpus=args.pin) for n in args.rtp_calls]
    print(baselines_markdown(rtp, twilio))
    if twilio and args.profile:
        print(twilio["runs"][-1]["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
