"""One measured point of the capacity rig: a daemon on CPU 0, its upstream simulator and a load
generator on CPU 1, N concurrent calls of one ingest (twilio, rtp or whip: aiortc publishers sending
pre-encoded Opus over DTLS-SRTP), every call carrying the marked clip (so every call alerts and a
webhook receiver answers 204 at once).

Everything is read from outside the daemon: its own histograms over /metrics (chunk, result and alert
latency, GC pauses), /proc for its CPU and RSS, the load generator's summary for what it sent and how
late, and the CPU of the rig itself (load generator from getrusage of reaped children, simulator from
/proc), so a table always shows whether the rig kept up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import sys
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    CREDS,
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

FRAMES_PER_S = 50  # 20 ms frames / packets per leg
TWILIO_AUTH_TOKEN = "bench-twilio-token"  # the daemon checks X-Twilio-Signature; the loadgen signs with it
RTP_PORT_BASE = 20000
#: packets per WHIP call still in aiortc's jitter buffer when the DELETE ends the call (prefetch 4, and the
#: frame being assembled): not counted as loss (measured 4.2–4.3 per call on average, unloaded)
WHIP_HELD_PACKETS = 5


@dataclass
class PointOptions:
    ingest: str  # "twilio", "rtp" or "whip"
    calls: int
    seconds: float = 24.0  # each call's length (twilio: the 8 s clip repeated to cover it)
    ramp_s: float = 5.0  # call starts spread over this (rtp: plus its own phase spread over 13 ticks)
    track: str = "inbound"  # twilio: inbound or both
    clip: str = "marked"  # marked: every call alerts; clean: none do
    channels: int = 2
    loadgen_procs: int = 1  # twilio, whip: calls split over this many load generator processes
    outbox_sync: str = "full"
    webhook: bool = True
    pin: bool = True
    timeline: bool = False
    rtp_max_bytes: int = 2048  # [ingest.rtp] datagram_max_bytes (0: asyncio's stock transport)
    rtp_sockets: str = "one"  # loadgen rtp --sockets


def config_text(o: PointOptions, *, sim_port: int, hook_port: int, outbox: Path) -> str:
    cfg = f"""
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
channels = {o.channels}
max_streams_per_channel = 1000
[outbox]
path = "{outbox}"
synchronous = "{o.outbox_sync}"
"""
    if o.ingest == "whip":  # its own port, never the default 8081 another daemon on the machine may hold
        return cfg + """[ingest.twilio]
enabled = false
[ingest.whip]
listen = "127.0.0.1:0"
max_calls = 5000
""" + _webhook(o, hook_port)
    cfg += "[ingest.whip]\nenabled = false\n"
    if o.ingest == "twilio":
        cfg += '[ingest.websocket]\nlisten = "127.0.0.1:0"\n[ingest.twilio]\nmax_calls = 5000\n'
    else:
        cfg += f"""[ingest.twilio]
enabled = false
[ingest.rtp]
enabled = true
auto_calls = true
port_min = {RTP_PORT_BASE}
port_max = {RTP_PORT_BASE + 2 * o.calls + 1}
max_calls = 5000
inactivity_timeout_ms = 2000
datagram_max_bytes = {o.rtp_max_bytes}
control_listen = "127.0.0.1:0"
"""
    return cfg + _webhook(o, hook_port)


def _webhook(o: PointOptions, hook_port: int) -> str:
    if not o.webhook:
        return ""
    return f'[[webhook]]\nurl = "http://127.0.0.1:{hook_port}/hook"\nsecret_env = "BENCH_WEBHOOK_SECRET"\n'


def long_clip(src: Path, seconds: float, dst: Path) -> Path:
    """`src` repeated to at least `seconds` (whole repeats, so a marked clip stays marked throughout)."""
    with wave.open(str(src)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    repeat = max(1, int(np.ceil(seconds * rate / len(pcm))))
    with wave.open(str(dst), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.tile(pcm, repeat).tobytes())
    return dst


_LATE = re.compile(r"max lateness ([\d.]+) ms(?:, p99 lateness ≤ ([\d.]+) ms)?")


def loadgen_lateness(out: str) -> tuple[float, float]:
    """(max, p99) lateness in ms over every loadgen summary in `out` (p99: the worst process's)."""
    worst, p99 = 0.0, 0.0
    for m in _LATE.finditer(out):
        worst = max(worst, float(m.group(1)))
        p99 = max(p99, float(m.group(2) or "nan"))
    return worst, p99


def _sum_lines(out: str, prefix: str) -> int:
    return sum(int(line.split()[-1]) for line in out.splitlines() if line.startswith(prefix))


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def loadgen_commands(o: PointOptions, work: Path, ports: dict[str, int]) -> list[list[str]]:
    base = [sys.executable, "-m", "daemon.cli", "loadgen"]
    if o.ingest == "whip":  # the loadgen loops the 8 s clip itself (token: $SPOOFWATCH_WHIP_TOKEN)
        url = f"http://127.0.0.1:{ports['whip']}/whip"
        return [[*base, "whip", "--url", url, "--calls", str(n), "--clip", o.clip, "--duration-s", str(o.seconds),
                 "--ramp-s", str(o.ramp_s)] for n in _split(o.calls, o.loadgen_procs)]
    if o.ingest == "rtp":
        clip = long_clip(ROOT / f"daemon/clips/speech_{o.clip}_16k.wav", o.seconds, work / f"{o.clip}.wav")
        return [[*base, "rtp", "--port-base", str(RTP_PORT_BASE), "--calls", str(o.calls), "--clip", str(clip),
                        "--duration-s", str(o.seconds), "--sockets", o.rtp_sockets, "--ramp-s", str(o.ramp_s)]]
    marked = long_clip(ROOT / f"daemon/clips/speech_{o.clip}_16k.wav", o.seconds, work / f"{o.clip}.wav")
    clean = long_clip(ROOT / "daemon/clips/speech_clean_16k.wav", o.seconds, work / "clean.wav")
    url = f"ws://127.0.0.1:{ports['twilio']}/twilio"
    cmds = []
    for n in _split(o.calls, o.loadgen_procs):
        cmd = [*base, "twilio", "--url", url, "--calls", str(n), "--clip", str(marked), "--track", o.track,
                      "--ramp-s", str(o.ramp_s)]
        if o.track == "both":
            cmd += ["--other-clip", str(clean)]
        cmds.append(cmd)
    return cmds


def _split(calls: int, procs: int) -> list[int]:
    """`calls` over `procs` load generator processes (none empty)."""
    procs = max(1, min(procs, calls))
    return [calls // procs + (1 if i < calls % procs else 0) for i in range(procs)]


def scan_whip_sessions(log: list[str], peaks: dict[str, int]) -> None:
    """Each WHIP session's `track_queue_peak` (the longest aiortc track queue its reader found: how far
    the daemon's readers fell behind decoding) from the daemon's "whip session ended" log lines. The
    rig keeps only the last 200 log lines, so this is scanned at every poll and may miss a few."""
    for line in log:
        if '"whip session ended"' in line:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                rec = json.loads(line)
                peaks[str(rec["whip_session"])] = int(rec["track_queue_peak"])


async def whip_warmup(cmd: list[str], pin_cpu: int | None) -> None:
    """One short WHIP call before the point: the daemon imports aiortc and PyAV's codecs at its first
    offer, which would otherwise count as RSS per call."""
    args = list(cmd)
    for flag, value in (("--calls", "1"), ("--duration-s", "1"), ("--ramp-s", "0")):
        args[args.index(flag) + 1] = value
    proc = await asyncio.create_subprocess_exec(*args, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    if pin_cpu is not None:
        await pin(proc.pid, pin_cpu)
    try:
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise RuntimeError("WHIP warm-up call failed:\n" + out.decode(errors="replace")[-2000:])


async def calls_ended(http: int, expected: float, timeout_s: float = 120.0) -> None:
    """Until every call's summary is committed (final results are in), or, when some calls never
    started (refused, or a publisher that could not connect), until no call is active and the count
    stood still for 3 s; the row then warns about the calls that did not alert."""
    still, last = 0, -1.0
    async with asyncio.timeout(timeout_s):
        while True:
            text = scrape(http)
            ended = sum(v for _, v in samples(text, "spoofwatch_calls_total"))
            active = sum(v for _, v in samples(text, "spoofwatch_calls_active"))
            still = still + 1 if ended == last and not active else 0
            if ended >= expected or still >= 6:
                return
            last = ended
            await asyncio.sleep(0.5)


async def run_point(o: PointOptions, work: Path) -> dict[str, Any]:
    """Run one point; returns the table row (see `ROW_KEYS`) plus details."""
    os.environ["BENCH_WEBHOOK_SECRET"] = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
    os.environ["TWILIO_AUTH_TOKEN"] = TWILIO_AUTH_TOKEN
    os.environ["SPOOFWATCH_WHIP_TOKEN"] = CREDS["SPOOFWATCH_WHIP_TOKEN"]  # what `loadgen whip` sends
    if o.pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {1})  # the webhook receiver and the scrapes stay off the daemon's CPU
    legs = 2 if o.ingest == "twilio" and o.track == "both" else 1
    sim_port = free_port()
    sim = await start_simulator(sim_port)
    async with sink_receiver() as hook_port:
        daemon = await start_daemon(config_text(o, sim_port=sim_port, hook_port=hook_port,
                                                outbox=work / f"outbox-{o.ingest}-{o.calls}.sqlite3"), work)
        if o.pin:
            await pin(daemon.pid, 0)
            await pin(sim.pid, 1)
        try:
            ports = daemon.info["ports"]
            http = ports["http"]
            cmds = loadgen_commands(o, work, ports)
            if o.ingest == "whip":
                await whip_warmup(cmds[0], pin_cpu=1 if o.pin else None)
                async with asyncio.timeout(30):  # its call counted, so the count below starts after it
                    while not sum(v for _, v in samples(scrape(http), "spoofwatch_calls_total")):  # noqa: ASYNC110
                        await asyncio.sleep(0.2)
            before = scrape(http)
            calls_before = sum(v for _, v in samples(before, "spoofwatch_calls_total"))
            rss0 = peak = rss_bytes(daemon.pid)
            cpu0, sim0 = cpu_seconds(daemon.pid), cpu_seconds(sim.pid)
            kids0, self0 = children_cpu_s(), time.process_time()
            t0 = time.monotonic()
            gens = [await asyncio.create_subprocess_exec(*c, cwd=str(ROOT), stdout=asyncio.subprocess.PIPE,
                                                         stderr=asyncio.subprocess.STDOUT) for c in cmds]
            if o.pin:
                for g in gens:
                    await pin(g.pid, 1)
            waits = [asyncio.ensure_future(g.communicate()) for g in gens]
            cpu_trace: list[tuple[float, float]] = []
            gen_trace: list[tuple[float, float]] = []  # the load generators' CPU, while all of them run
            queue_peaks: dict[str, int] = {}
            prev, timeline = buckets(before, "spoofwatch_chunk_latency_seconds"), []
            while not all(w.done() for w in waits):
                await asyncio.sleep(1.0 if o.timeline else 0.5)
                peak = max(peak, rss_bytes(daemon.pid))
                cpu_trace.append((time.monotonic(), cpu_seconds(daemon.pid)))
                with contextlib.suppress(OSError, ValueError, IndexError):  # one has exited: /proc is gone
                    gen_trace.append((time.monotonic(), sum(cpu_seconds(g.pid) for g in gens)))
                if o.ingest == "whip":
                    scan_whip_sessions(daemon.log, queue_peaks)
                if o.timeline:  # per second: chunks, and how many took over 20 ms
                    now_b = buckets(scrape(http), "spoofwatch_chunk_latency_seconds")
                    d = diff_buckets(now_b, prev)
                    total = d[-1][1] if d else 0.0
                    over = total * (1 - share_within(0.02, d)) if total else 0.0
                    timeline.append(f"{time.monotonic() - t0:.0f}s:{total:.0f}/{over:.0f}")
                    prev = now_b
            t_gen = time.monotonic()
            gen_out = "\n".join(w.result()[0].decode(errors="replace") for w in waits)
            kids1, sim1, self1 = children_cpu_s(), cpu_seconds(sim.pid), time.process_time()
            await calls_ended(http, calls_before + o.calls)
            cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
            await asyncio.sleep(2.0)  # let the last webhooks land
            after = scrape(http)
            scan_whip_sessions(daemon.log, queue_peaks)
        finally:
            await stop(daemon)
            await stop(sim)

    def hist(name: str) -> list[tuple[float, float]]:
        return diff_buckets(buckets(after, name), buckets(before, name))

    def count(name: str, **match: str) -> float:
        def total(text: str) -> float:
            return sum(v for lab, v in samples(text, name) if all(lab.get(k) == x for k, x in match.items()))
        return total(after) - total(before)

    chunk, alert = hist("spoofwatch_chunk_latency_seconds"), hist("spoofwatch_alert_latency_seconds")
    result, gc_pause = hist("spoofwatch_result_latency_seconds"), hist("spoofwatch_gc_pause_seconds")
    gen_wall = max(t_gen - t0, 1e-9)
    # daemon CPU in the steady state: all calls up (after the ramp) until the first ones end
    lo, hi = t0 + o.ramp_s + (0.3 if o.ingest == "rtp" else 0.0) + 2.0, t0 + o.seconds - 1.0
    mid = [(t, c) for t, c in cpu_trace if lo <= t <= hi]
    gen_mid = [(t, c) for t, c in gen_trace if lo <= t <= hi]
    daemon_core = ((mid[-1][1] - mid[0][1]) / (mid[-1][0] - mid[0][0]) if len(mid) > 2
                   else (cpu1 - cpu0) / (t1 - t0))
    whip: dict[str, Any] = {}
    if o.ingest == "rtp":
        sent = _sum_lines(gen_out, "packets sent")
        received = count("spoofwatch_frames_received_total", ingest="rtp") - o.calls  # one RTCP BYE per stream
    elif o.ingest == "whip":
        # every packet handed to aiortc (clip, silent tail, silence until the DELETE is answered) against
        # the frames the daemon decoded, less what aiortc's jitter buffer (prefetch 4) still holds at DELETE
        sent = _sum_lines(gen_out, "packets sent (clip + tail)")
        decoded = count("spoofwatch_frames_received_total", ingest="whip")
        received = decoded + WHIP_HELD_PACKETS * o.calls
        whip = {"track_queue_peak": max(queue_peaks.values(), default=None), "whip_sessions_seen": len(queue_peaks),
                "whip_unreceived_per_call": (sent - decoded) / max(o.calls, 1)}
    else:
        sent = _sum_lines(gen_out, "frames sent")
        received = count("spoofwatch_frames_received_total", ingest="twilio")
    max_late, p99_late = loadgen_lateness(gen_out)
    gc_total = gc_pause[-1][1] if gc_pause else 0.0
    frame_rate = o.calls * legs * FRAMES_PER_S
    loadgen_core = (kids1 - kids0) / gen_wall
    sim_core = (sim1 - sim0) / gen_wall
    alerts = count("spoofwatch_alerts_total", type="call.spoof_detected")
    errors = [line for line in gen_out.splitlines() if line.startswith("error")]
    warnings = [w for w, bad in [
        (f"only {alerts:.0f} of {o.calls} calls alerted", o.clip == "marked" and alerts < o.calls),
        (f"{len(errors)} load generator errors", bool(errors)),
        (f"load generator p99 lateness {p99_late:.0f} ms", p99_late > 20),
        (f"rig at {loadgen_core + sim_core:.2f} core of CPU 1", loadgen_core + sim_core > 0.8),
    ] if bad]
    return {
        "ingest": o.ingest, "calls": o.calls,
        "chunk_p50_ms": 1000 * quantile(0.5, chunk), "chunk_p99_ms": 1000 * quantile(0.99, chunk),
        "within_20ms_share": share_within(0.02, chunk), "loss": max(0, int(sent - received)),
        "daemon_cpu_core": daemon_core, "cpu_us_per_frame": 1e6 * daemon_core / frame_rate,
        "rss_kib_per_call": (peak - rss0) / 1024 / o.calls,
        "alert_p99_ms": 1000 * quantile(0.99, alert), "loadgen_max_late_ms": max_late,
        "loadgen_p99_late_ms": p99_late, "loadgen_cpu_core": loadgen_core, "simulator_cpu_core": sim_core,
        "rig_cpu_core": loadgen_core + sim_core + (self1 - self0) / gen_wall,
        # details
        "legs": o.calls * legs, "sent": sent, "received": int(received), "chunks": chunk[-1][1] if chunk else 0,
        "alerts": alerts, "warnings": warnings,
        "alert_p50_ms": 1000 * quantile(0.5, alert),
        "result_p50_ms": 1000 * quantile(0.5, result), "result_p99_ms": 1000 * quantile(0.99, result),
        "drops": count("spoofwatch_drops_total"), "gc_collections": gc_total,
        "gc_over_10ms": gc_total - next((c for le, c in gc_pause if abs(le - 0.01) < 1e-12), gc_total),
        "daemon_cpu_core_whole_run": (cpu1 - cpu0) / (t1 - t0),
        # the load generators in the same steady state (no connection setup): what the rig's core carries
        "loadgen_cpu_core_steady": ((gen_mid[-1][1] - gen_mid[0][1]) / (gen_mid[-1][0] - gen_mid[0][0])
                                    if len(gen_mid) > 2 else None),
        "loadgen_errors": errors[:5],
        "timeline": " ".join(timeline),
        **whip,
    }


#: the columns of every capacity table, in order, with their headers and formats
ROW_KEYS: list[tuple[str, str, str]] = [
    ("ingest", "ingest", "{}"), ("calls", "calls", "{}"), ("chunk_p50_ms", "chunk p50 ms", "{:.2f}"),
    ("chunk_p99_ms", "chunk p99 ms", "{:.2f}"), ("within_20ms_share", "≤20 ms", "{:.1%}"), ("loss", "loss", "{}"),
    ("daemon_cpu_core", "daemon CPU (core)", "{:.2f}"), ("cpu_us_per_frame", "µs/frame", "{:.1f}"),
    ("rss_kib_per_call", "RSS KiB/call", "{:.0f}"), ("alert_p99_ms", "alert p99 ms", "{:.0f}"),
    ("loadgen_max_late_ms", "loadgen max late ms", "{:.1f}"), ("loadgen_p99_late_ms", "loadgen p99 late ms", "{:.0f}"),
    ("loadgen_cpu_core", "loadgen CPU", "{:.2f}"), ("simulator_cpu_core", "simulator CPU", "{:.2f}"),
    ("track_queue_peak", "track queue peak", "{}"),
]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for _, h, _ in ROW_KEYS) + " |", "|" + "---|" * len(ROW_KEYS)]
    for r in rows:
        cells = []
        for key, _, fmt in ROW_KEYS:
            v = r.get(key)
            cells.append("–" if v is None or (isinstance(v, float) and v != v) else fmt.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def knee(rows: list[dict[str, Any]], ingest: str, p99_ms: float = 20.0) -> int | None:
    """Most calls of `ingest` with chunk p99 ≤ `p99_ms` and no loss (None: no point met it)."""
    ok = [r["calls"] for r in rows if r["ingest"] == ingest and r["chunk_p99_ms"] <= p99_ms and r["loss"] == 0]
    return max(ok) if ok else None
