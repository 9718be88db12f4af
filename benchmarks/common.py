"""Shared parts of the load benchmarks: run the daemon and a standalone simulator as processes,
sample their CPU and RSS from /proc, and read latency quantiles from the daemon's own histograms."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


_SAMPLE = re.compile(r'^(?P<name>[a-z_:]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group("name") == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group("labels") or ""))
            out.append((labels, float(m.group("value"))))
    return out


def buckets(text: str, metric: str) -> list[tuple[float, float]]:
    """Cumulative (le, count) pairs of a histogram, summed over label sets."""
    acc: dict[float, float] = {}
    for labels, value in samples(text, f"{metric}_bucket"):
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        acc[le] = acc.get(le, 0.0) + value
    return sorted(acc.items())


def diff_buckets(after: list[tuple[float, float]], before: list[tuple[float, float]]) -> list[tuple[float, float]]:
    b = dict(before)
    return [(le, c - b.get(le, 0.0)) for le, c in after]


def quantile(q: float, cum: list[tuple[float, float]]) -> float:
    """histogram_quantile() as Prometheus computes it (linear within the bucket)."""
    if not cum or cum[-1][1] <= 0:
        return float("nan")
    total = cum[-1][1]
    rank = q * total
    prev_le, prev_c = 0.0, 0.0
    for le, c in cum:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / max(c - prev_c, 1e-12))
        prev_le, prev_c = le, c
    return prev_le


def share_within(edge: float, cum: list[tuple[float, float]]) -> float:
    total = cum[-1][1] if cum else 0.0
    within = next((c for le, c in cum if abs(le - edge) < 1e-12), float("nan"))
    return within / total if total else float("nan")


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    info: dict[str, Any]
    log: list[str]

    @property
    def pid(self) -> int:
        return self.proc.pid


async def _spawn(args: list[str], env: dict[str, str], ready_key: str, timeout: float = 60.0) -> Proc:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon.cli", *args, cwd=str(ROOT),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})
    log: list[str] = []
    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            log.append(line)
            del log[:-200]
            if fut.done():
                continue
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict) and ready_key in rec:
                    fut.set_result(rec)
            if ready_key == "listening" and "listening on" in line and not fut.done():
                fut.set_result({"line": line})
        if not fut.done():
            fut.set_exception(RuntimeError("process exited:\n" + "\n".join(log[-20:])))

    task = asyncio.create_task(read())
    _READERS.add(task)
    async with asyncio.timeout(timeout):
        info = await fut
    return Proc(proc, info, log)


_READERS: set[asyncio.Task[None]] = set()

#: the WHIP ingest is on by default and needs its token to start
CREDS = {"SPOOFWATCH_CID": "9", "SPOOFWATCH_API_KEY": "bench-key", "SPOOFWATCH_WHIP_TOKEN": "bench-whip-token"}


async def start_simulator(port: int) -> Proc:
    return await _spawn(["simulator", "--listen", f"127.0.0.1:{port}"], CREDS, "listening")


async def pin(pid: int, cpu: int) -> None:
    """Pin a process (all its threads) to one CPU, when taskset exists."""
    if shutil.which("taskset"):
        proc = await asyncio.create_subprocess_exec("taskset", "-a", "-p", "-c", str(cpu), str(pid),
                                                    stdout=asyncio.subprocess.DEVNULL)
        await proc.wait()


async def start_daemon(config_text: str, workdir: Path) -> Proc:
    cfg = workdir / "bench.toml"
    cfg.write_text(config_text)
    return await _spawn(["run", "--config", str(cfg)], CREDS, "ports")


async def stop(p: Proc) -> None:
    if p.proc.returncode is None:
        p.proc.terminate()
        try:
            async with asyncio.timeout(60):
                await p.proc.wait()
        except TimeoutError:
            p.proc.kill()
            await p.proc.wait()


@contextlib.asynccontextmanager
async def sink_receiver() -> AsyncIterator[int]:
    """A webhook receiver that answers 204 at once (alert latency = daemon side only)."""
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
