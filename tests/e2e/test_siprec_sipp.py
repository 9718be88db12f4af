"""SIPREC end to end with SIPp as the recording client (SRC): the daemon as a subprocess, SIPp sending the
INVITE (SDP with two labelled m-lines + rs-metadata), SIPp's rtp_stream playing the marked clip (raw
μ-law made by sox here) on the caller's stream and ffmpeg playing the clean clip on the agent's, a real
webhook receiver verifying every delivery. Over UDP and TCP; a hold/resume re-INVITE; an OPTIONS ping."""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import ROOT, DaemonProcess, WebhookReceiver, receiver, start_daemon, write_config

PEERS = ROOT / "tests" / "peers" / "siprec"
CLIPS = ROOT / "daemon" / "clips"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not all(shutil.which(t) for t in ("sipp", "ffmpeg", "sox")),
                                 reason="needs sipp (apt sip-tester), ffmpeg and sox: scripts/system-deps.sh")]


def free_port(kind: int = socket.SOCK_DGRAM, even: bool = True) -> int:
    """A port free for `kind` now; `even` for SIPp's media port (it and port+2, the second m-line, must be
    even-aligned; Linux hands out only odd ports to a TCP bind(0), so the SIP port is not asked to be)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if (port % 2 == 0 or not even) and port < 65000:
            return port
    raise AssertionError("no even free port")


def config(tmp_path: Path, hook_url: str) -> Path:
    base = 25000 + 40 * random.randrange(20)
    return write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=hook_url, extra=f"""
[ingest.rtp]
enabled = true
port_min = {base}
port_max = {base + 39}
control_listen = "127.0.0.1:0"

[ingest.siprec]
enabled = true
listen_udp = "127.0.0.1:0"
listen_tcp = "127.0.0.1:0"
""")


async def run(*argv: str, cwd: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(*argv, cwd=str(cwd), stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60.0) -> str:
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode(errors="replace")


def make_ulaw(tmp_path: Path) -> None:
    """SIPp's rtp_stream wants raw μ-law (a WAV plays nothing): the marked clip, by sox."""
    subprocess.run(["sox", str(CLIPS / "speech_marked_16k.wav"), "-r", "8000", "-c", "1", "-t", "ul",
                    str(tmp_path / "speech.ulaw")], check=True, timeout=30)


def session_legs(daemon: DaemonProcess, call_id: str) -> dict[str, int] | None:
    for line in daemon.lines:
        if line.get("msg") == "siprec session started" and line.get("call_id") == call_id:
            return {str(k): int(v) for k, v in line["legs"].items()}
    return None


async def start_sipp(port: int, tmp_path: Path, scenario: str, transport: str,
                     pause_ms: int) -> asyncio.subprocess.Process:
    """SIPp on fresh local ports; started again (3 starts at most) when another process took a port between
    `free_port()` and SIPp's bind (the race every probe-then-bind port choice has on a busy machine)."""
    async def launch() -> asyncio.subprocess.Process:
        return await run("sipp", f"127.0.0.1:{port}", "-sf", str(PEERS / scenario), "-t", transport, "-m", "1",
                         "-i", "127.0.0.1", "-mi", "127.0.0.1",
                         "-p", str(free_port(socket.SOCK_STREAM if transport == "t1" else socket.SOCK_DGRAM,
                                             even=False)),
                         "-mp", str(free_port()), "-d", str(pause_ms), "-timeout", "50", "-timeout_error",
                         "-nostdin", "-trace_err", cwd=tmp_path)

    for _ in range(2):
        sipp = await launch()
        assert sipp.stdout is not None
        try:  # a bind failure ends SIPp at once; a running SIPp says nothing on stdout before its screen
            async with asyncio.timeout(1.0):
                opening = await sipp.stdout.readline() + await sipp.stdout.readline()
        except TimeoutError:
            return sipp
        if b"Unable to bind" not in opening:
            return sipp
        await finish(sipp)
    return await launch()


async def record_one(daemon: DaemonProcess, tmp_path: Path, scenario: str, transport: str,
                     pause_ms: int) -> tuple[str, str]:
    """One SIPp recording session + ffmpeg on the agent's port; returns (spoofwatch call id, SIPp output).
    Whatever it started is killed when it ends early (a failed assertion, or cancelled with its sibling)."""
    port = daemon.ports["siprec_udp" if transport == "u1" else "siprec_tcp"]
    started: list[asyncio.subprocess.Process] = []
    try:
        sipp = await start_sipp(port, tmp_path, scenario, transport, pause_ms)
        started.append(sipp)
        call_id = f"siprec-1-{sipp.pid}@127.0.0.1"  # SIPp's [call_id] is "<call number>-<pid>@<local ip>"
        legs = None
        for _ in range(300):  # the 200 OK's ports, as the daemon logs them (bounded: 15 s)
            legs = session_legs(daemon, call_id)
            if legs is not None or sipp.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert legs is not None and set(legs) == {"caller", "agent"}, await finish(sipp)
        ffmpeg = await run("ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-i",
                           str(CLIPS / "speech_clean_16k.wav"), "-af", "aresample=8000,asetnsamples=n=160", "-ac",
                           "1", "-c:a", "pcm_alaw", "-payload_type", "8", "-f", "rtp",
                           f"rtp://127.0.0.1:{legs['agent']}", cwd=tmp_path)
        started.append(ffmpeg)
        out = await finish(sipp)
        assert sipp.returncode == 0, out
        await finish(ffmpeg)
        return call_id, out
    finally:
        for proc in started:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def by_call(hook: WebhookReceiver, event: str, call_id: str) -> list[dict[str, Any]]:
    return [d.body["data"] for d in hook.of_type(event) if d.body["data"]["call_id"] == call_id]


async def test_sipp_recording_over_udp_and_tcp_alerts_on_the_marked_participant(tmp_path: Path) -> None:
    make_ulaw(tmp_path)
    async with receiver() as hook:
        daemon = await start_daemon(config(tmp_path, hook.url))
        try:
            async with asyncio.TaskGroup() as both:  # one failing cancels (and so cleans up) the other
                udp = both.create_task(record_one(daemon, tmp_path, "recording.xml", "u1", 9000))
                tcp = both.create_task(record_one(daemon, tmp_path, "recording.xml", "t1", 9000))
            calls = [udp.result()[0], tcp.result()[0]]
            await hook.wait_for(lambda: all(by_call(hook, "call.summary", c) for c in calls), timeout=60)
        finally:
            await daemon.stop()
    for call_id in calls:
        (alert,) = by_call(hook, "call.spoof_detected", call_id)
        assert alert["leg"] == "caller" and alert["ingest"] == "siprec"
        assert alert["metadata"]["participant.caller"] == "sip:caller@example.com"
        assert alert["metadata"]["sip_session_id"] == "orig-call-1@pbx"
        (summary,) = by_call(hook, "call.summary", call_id)
        assert summary["end_reason"] == "bye"
        assert summary["legs"]["caller"]["alerted"] and not summary["legs"]["agent"]["alerted"]
        assert summary["legs"]["agent"]["segments_seen"] > 0  # the clean leg was analysed, not silent
    assert hook.rejected == 0


async def test_hold_and_resume_keep_one_call_and_options_ping_gets_200(tmp_path: Path) -> None:
    make_ulaw(tmp_path)
    async with receiver() as hook:
        daemon = await start_daemon(config(tmp_path, hook.url))
        try:
            ping = await run("sipp", f"127.0.0.1:{daemon.ports['siprec_udp']}", "-sf", str(PEERS / "options.xml"),
                             "-m", "1", "-i", "127.0.0.1", "-p", str(free_port()), "-timeout", "20",
                             "-timeout_error", "-nostdin", cwd=tmp_path)
            out = await finish(ping)
            assert ping.returncode == 0, out  # SIPp exits 0 only when the scenario got its 200
            call_id, _ = await record_one(daemon, tmp_path, "hold.xml", "u1", 3000)
            await hook.wait_for(lambda: by_call(hook, "call.summary", call_id), timeout=60)
            updates = [ln for ln in daemon.lines if ln.get("msg") == "siprec session updated"
                       and ln.get("call_id") == call_id]
        finally:
            await daemon.stop()
    assert [u["held_streams"] for u in updates] == [["1", "2"], []]
    (summary,) = by_call(hook, "call.summary", call_id)
    assert summary["end_reason"] == "bye" and set(summary["legs"]) == {"caller", "agent"}
    assert len(hook.of_type("call.summary")) == 1  # one call across hold and resume
