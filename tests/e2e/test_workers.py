"""`[process] workers = 2`: the supervisor as a real subprocess with its two workers, calls over the shared
Twilio listener, the RTP control API and one /metrics, every webhook verified at a real receiver.

- a SIGKILLed worker is restarted and the other worker's calls go on untouched;
- one /metrics scrape holds every worker's counters (the sum checked against the calls sent);
- every packet of an RTP call lands on the one worker that allocated its ports;
- a worker killed with an alert pending delivers it after its restart (same outbox partition);
- SIGTERM to the supervisor drains every worker, and every summary is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import ROOT, DaemonProcess, receiver, start_daemon, start_loadgen, write_config

pytestmark = pytest.mark.slow
PACKETS = 50
TOKEN_ENV = {"TWILIO_AUTH_TOKEN": "local-dev-twilio-token", "SPOOFWATCH_RTP_TOKEN": "rtp-test-token"}
RTP_AUTH = {"Authorization": "Bearer rtp-test-token"}


def config(tmp_path: Path, hook_url: str) -> Path:
    path = write_config(tmp_path / "w.toml", outbox=tmp_path / "outbox.sqlite3", webhook_url=hook_url, extra="""
[process]
workers = 2

[ingest.rtp]
enabled = true
port_min = 23000
port_max = 23399
control_listen = "127.0.0.1:0"
""")
    text = path.read_text().replace("[outbox]\n", "[outbox]\nretry_schedule_s = [0.5]\nmax_attempts = 1000\n")
    path.write_text(text)
    return path


class Host:
    """The supervisor's public endpoints and each worker's private ones (as its /healthz lists them)."""

    def __init__(self, daemon: DaemonProcess, http: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.http = http
        self.base = f"http://127.0.0.1:{daemon.ports['http']}"

    async def health(self) -> dict[str, Any]:
        async with self.http.get(self.base + "/healthz") as resp:
            return dict(await resp.json())

    async def workers(self) -> dict[int, dict[str, Any]]:
        return {int(i): w["process"] for i, w in (await self.health())["workers"].items()}

    async def wait_all_ready(self, timeout: float = 60) -> None:
        async def ready() -> bool:
            async with self.http.get(self.base + "/readyz") as resp:
                return resp.status == 200 and "2/2" in await resp.text()
        await poll(ready, timeout, "2/2 workers ready")

    async def metric(self, name: str, port: int | None = None, **labels: str) -> float:
        url = f"http://127.0.0.1:{port}/metrics" if port is not None else self.base + "/metrics"
        async with self.http.get(url) as resp:
            text = await resp.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not (line.startswith(name + " ") or line.startswith(name + "{")):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    async def worker_metric(self, index: int, name: str, **labels: str) -> float:
        return await self.metric(name, (await self.workers())[index]["ports"]["http"], **labels)


async def poll(predicate: Any, timeout: float, what: str) -> None:
    """Poll another process's observable state every 0.1 s, bounded by `timeout`."""
    for _ in range(int(timeout / 0.1)):
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def run_calls(url: str, calls: int, *extra: str) -> None:
    proc = await start_loadgen(url, "--calls", str(calls), "--clip", "marked", *extra)
    assert await proc.wait() == 0


async def test_two_workers_restart_metrics_rtp_pending_and_drain(tmp_path: Path) -> None:
    async with receiver() as hooks, aiohttp.ClientSession() as http:
        daemon = await start_daemon(config(tmp_path, hooks.url), env=TOKEN_ENV)
        try:
            host = Host(daemon, http)
            await host.wait_all_ready()
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"

            # 1. a worker SIGKILLed mid-call: the other worker's calls finish and alert; it comes back
            calls = asyncio.create_task(run_calls(url, 8, "--ramp-s", "1"))
            await poll(lambda: both_busy(host), 30, "calls on both workers")
            victim = (await host.workers())[0]["pid"]
            os.kill(victim, signal.SIGKILL)
            with contextlib.suppress(AssertionError):
                await calls  # the killed worker's calls fail: that is the point
            survivor_calls = await host.worker_metric(1, "spoofwatch_calls_total")
            assert survivor_calls >= 1
            await hooks.wait_for(lambda: len(hooks.of_type("call.summary")) >= survivor_calls, 30)
            await host.wait_all_ready()
            assert (await host.workers())[0]["pid"] != victim
            assert await host.metric("spoofwatch_worker_restarts_total", worker="0") == 1
            assert await host.worker_metric(1, "spoofwatch_calls_total") == survivor_calls  # untouched

            # 2. one scrape holds every worker's counters
            before = await host.metric("spoofwatch_calls_total")
            summaries = len(hooks.of_type("call.summary"))
            await run_calls(url, 6, "--fast")
            await hooks.wait_for(lambda: len(hooks.of_type("call.summary")) == summaries + 6, 30)
            assert await host.metric("spoofwatch_calls_total") == before + 6
            assert await host.worker_metric(0, "spoofwatch_calls_total") + \
                await host.worker_metric(1, "spoofwatch_calls_total") == before + 6

            # 3. RTP: every packet of a call lands on the worker whose ports the control API handed out
            await rtp_call_lands_on_one_worker(host, daemon)
            summaries += 6 + 2  # the two RTP calls end with their summaries too
            await hooks.wait_for(lambda: len(hooks.of_type("call.summary")) == summaries, 30)

            # 4. a worker killed with events pending delivers them after its restart
            hooks.status = 503
            sent = 0
            for _ in range(20):  # the kernel spreads connections: send until worker 0 holds a pending event
                await run_calls(url, 1, "--fast")
                sent += 1
                if await host.worker_metric(0, "spoofwatch_outbox_pending") >= 1:
                    break
            assert await host.worker_metric(0, "spoofwatch_outbox_pending") >= 1
            pending_ids = set(hooks.failed_ids)
            os.kill((await host.workers())[0]["pid"], signal.SIGKILL)
            hooks.status = 200
            total = summaries + sent
            # every event that had failed is delivered, with the same webhook-id, after worker 0's restart
            await hooks.wait_for(lambda: pending_ids <= set(hooks.unique()), 60)
            await hooks.wait_for(lambda: len(hooks.of_type("call.summary")) == total, 30)
            await host.wait_all_ready()

            # 5. SIGTERM to the supervisor: every worker drains, every summary is delivered
            calls = asyncio.create_task(run_calls(url, 4, "--ramp-s", "0.5"))
            await poll(lambda: active(host, 4), 30, "4 calls in progress")
            await live_page_shows_every_worker(host)
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.proc.send_signal(signal.SIGTERM)  # a second SIGTERM (preStop, then the kubelet) changes nothing
            await calls
            async with asyncio.timeout(60):
                assert await daemon.proc.wait() == 0
            await hooks.wait_for(lambda: len(hooks.of_type("call.summary")) == total + 4, 30)
            assert hooks.rejected == 0
            # every Twilio call played the marked clip and alerted once; the two RTP calls were silence
            assert len(hooks.of_type("call.spoof_detected")) == len(hooks.of_type("call.summary")) - 2
        except BaseException:
            print("\n".join(daemon.messages()[-60:]))
            raise
        finally:
            daemon.kill()
            with contextlib.suppress(Exception):
                await daemon.stop(timeout=10)


async def live_page_shows_every_worker(host: Host) -> None:
    """The supervisor's live page: one host, the calls of both workers, in the state and the stream."""
    async with host.http.get(host.base + "/") as resp:
        assert resp.status == 200 and "spoofwatch" in await resp.text()
    per_worker = [{c["call_id"] for c in await worker_state(host, i) if c["state"] != "finished"} for i in (0, 1)]
    async with host.http.get(host.base + "/api/state") as resp:
        merged = await resp.json()
    live = {c["call_id"] for c in merged["calls"] if c["state"] != "finished"}
    assert merged["workers"] == 2 and live >= per_worker[0] | per_worker[1]
    async with host.http.get(host.base + "/api/events") as resp:
        event = ""
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "state":
                streamed = json.loads(line[5:])
                assert {c["call_id"] for c in streamed["calls"]} >= per_worker[0] | per_worker[1]
                break


async def worker_state(host: Host, index: int) -> list[dict[str, Any]]:
    port = (await host.workers())[index]["ports"]["http"]
    async with host.http.get(f"http://127.0.0.1:{port}/api/state") as resp:
        return list((await resp.json())["calls"])


async def both_busy(host: Host) -> bool:
    return all([await host.worker_metric(i, "spoofwatch_calls_active") >= 1 for i in (0, 1)])


async def active(host: Host, n: int) -> bool:
    return await host.metric("spoofwatch_calls_active") >= n


async def rtp_call_lands_on_one_worker(host: Host, daemon: DaemonProcess) -> None:
    control = f"http://127.0.0.1:{daemon.ports['rtp_control']}/v1/rtp/sessions"
    owners: dict[str, int] = {}
    for call_id in ("rtp-a", "rtp-b"):
        body = {"call_id": call_id, "legs": [{"name": "caller"}]}
        async with host.http.post(control, headers=RTP_AUTH, json=body) as r:
            assert r.status == 201
            port = (await r.json())["legs"][0]["port"]
        owners[call_id] = 0 if port < 23200 else 1  # worker 0 owns 23000-23199, worker 1 23200-23399
        before = [await host.worker_metric(i, "spoofwatch_frames_received_total", ingest="rtp") for i in (0, 1)]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SEND_RTP, str(port), str(PACKETS), cwd=str(ROOT))
        assert await proc.wait() == 0
        owner = owners[call_id]

        async def arrived(owner: int = owner, before: list[float] = before) -> bool:
            return await host.worker_metric(owner, "spoofwatch_frames_received_total", ingest="rtp") \
                >= before[owner] + PACKETS
        await poll(arrived, 10, "RTP packets at the owning worker")
        other = 1 - owner
        assert await host.worker_metric(other, "spoofwatch_frames_received_total", ingest="rtp") == before[other]
    # the least-loaded pick spread the two calls over both workers
    assert set(owners.values()) == {0, 1}
    async with host.http.get(control, headers=RTP_AUTH) as r:
        listed = {s["call_id"] for s in (await r.json())["sessions"]}
    assert listed >= {"rtp-a", "rtp-b"}
    for call_id in owners:
        async with host.http.delete(f"{control}/{call_id}", headers=RTP_AUTH) as r:
            assert r.status == 204


#: 20 ms PCMU packets to 127.0.0.1:PORT (silence: the test counts packets, not verdicts)
SEND_RTP = """
import socket, struct, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(struct.pack("!BBHII", 0x80, 0, i, i * 160, 0x1234) + b"\\xff" * 160, ("127.0.0.1", port))
    time.sleep(0.002)
"""
