"""A 30-second upstream outage in the middle of a call: the upstream (a standalone simulator process)
is killed and restarted on the same port (held by the test all along, so nothing else can take it). The
call survives, audio is replayed, verdicts still arrive, and upstream.degraded / upstream.recovered
webhooks are sent. A wrong API key gives a clear error and no retry storm."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import CLIPS, read_wav, write_wav
from tests.e2e.harness import ROOT, receiver, start_daemon, start_loadgen, write_config

pytestmark = pytest.mark.slow
SIM_ENV = {"SPOOFWATCH_CID": "77", "SPOOFWATCH_API_KEY": "e2e-key"}


@pytest.fixture
def held_port() -> Iterator[int]:
    """A free loopback port held for the whole test (see reserve_port), for the simulator to (re)bind."""
    with reserve_port() as held:
        yield int(held.getsockname()[1])


def reserve_port() -> socket.socket:
    """A socket bound (never listening) with SO_REUSEADDR to a free loopback port, to hold for the whole test:
    no other process can bind that port or get it as an ephemeral port meanwhile, while the simulator can
    (gRPC sets SO_REUSEADDR on its listeners, and Linux lets two such sockets share a port as long as only
    one listens), and again after it was killed. A port found free and bound later could be taken in between."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    return s


async def start_simulator(port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "daemon.cli", "simulator", "--listen",
                                                f"127.0.0.1:{port}", cwd=str(ROOT), env={**os.environ, **SIM_ENV},
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        async for line in proc.stderr:
            if b"listening on" in line:
                break
    return proc


async def test_call_survives_a_30_second_outage(tmp_path: Path, held_port: int) -> None:
    speech, rate = read_wav(CLIPS / "speech_marked_16k.wav")
    clip = write_wav(tmp_path / "long.wav", np.tile(speech, 6), rate)  # 48 s
    port = held_port
    sim = await start_simulator(port)
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url,
                           extra=f'[upstream]\ntarget = "127.0.0.1:{port}"\nretry_max_ms = 2000\n')
        daemon = await start_daemon(cfg)
        try:
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
            gen = await start_loadgen(url, "--calls", "1", "--clip", str(clip))
            await hook.wait_for(lambda: len(hook.of_type("call.spoof_detected")) == 1, timeout=20)
            sim.kill()  # the upstream vanishes mid-call
            await sim.wait()
            await hook.wait_for(lambda: len(hook.of_type("upstream.degraded")) == 1, timeout=25)
            await asyncio.sleep(max(0.0, 30.0 - 10.0))
            sim = await start_simulator(port)
            await hook.wait_for(lambda: len(hook.of_type("upstream.recovered")) == 1, timeout=20)
            assert await gen.wait() == 0
            await hook.wait_for(lambda: len(hook.of_type("call.summary")) == 1, timeout=30)
        finally:
            await daemon.stop()
            sim.kill()
            await sim.wait()
    leg = hook.of_type("call.summary")[0].body["data"]["legs"]["inbound"]
    assert len(leg["stream_pids"]) >= 2  # a new upstream stream after the outage
    assert leg["segments_seen"] >= 8  # verdicts before and after the outage
    assert hook.of_type("upstream.degraded")[0].body["data"]["status"] == "degraded"
    msgs = " ".join(daemon.messages())
    assert "upstream stream broke" in msgs and "upstream recovered" in msgs


async def test_wrong_api_key_no_retry_storm_clear_error(tmp_path: Path, held_port: int) -> None:
    port = held_port
    sim = await start_simulator(port)
    async with receiver() as hook:
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook.url,
                           extra=f'[upstream]\ntarget = "127.0.0.1:{port}"\n')
        daemon = await start_daemon(cfg, env={"SPOOFWATCH_API_KEY": "wrong-key"})
        try:
            url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
            gen = await start_loadgen(url, "--calls", "1", "--clip", "marked", "--fast")
            assert await gen.wait() == 0
            await hook.wait_for(lambda: len(hook.of_type("call.summary")) == 1, timeout=30)
            import aiohttp

            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{daemon.ports['http']}/metrics") as r:
                    metrics = await r.text()
        finally:
            await daemon.stop()
            sim.kill()
            await sim.wait()
    opened = [float(line.split()[-1]) for line in metrics.splitlines()
              if line.startswith("spoofwatch_upstream_streams_opened_total")]
    # No retry storm: once UNAUTHENTICATED is seen the leg stops. (gRPC core can report a write racing the
    # server's abort as INTERNAL, which is retried once or twice before the real status arrives.)
    assert opened and opened[0] <= 3, [m for m in daemon.messages() if "upstream" in m]
    assert 'spoofwatch_upstream_errors_total{code="UNAUTHENTICATED"} 1.0' in metrics
    summary = hook.of_type("call.summary")[0].body["data"]
    assert summary["legs"]["inbound"]["analysed"] is False
    assert len(hook.of_type("upstream.degraded")) == 1
    errors = [m for m in daemon.messages() if "NOT analysed" in m and "UNAUTHENTICATED" in m]
    assert errors, daemon.messages()
