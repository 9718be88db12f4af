"""Two daemon instances on two test hosts (network namespaces) behind HAProxy, fronted the way a user
would: websocket calls spread over both; an instance drained with SIGTERM finishes its calls while new
calls go to the other; an instance SIGKILLed is taken out by the balancer's /readyz health check, and
the alerts it had pending are delivered when it comes back on the same outbox. Every alert and summary
is verified at a Standard Webhooks receiver."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from tests.e2e import netns
from tests.e2e.harness import DaemonProcess, WebhookReceiver, start_daemon, start_loadgen, write_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(netns.available() is not None or
                                                   not any(os.access(os.path.join(d, "haproxy"), os.X_OK)
                                                           for d in ("/usr/sbin", "/usr/bin")),
                                                   reason="needs root, iproute2 and haproxy")]
TWILIO_PORT = 8080
HTTP_PORT = 9108
#: the load generator signs each upgrade with this development token by default (Twilio's signature check
#: is on by default); the balancer keeps the Host header, so the daemons check the URL the loadgen signed
TOKEN_ENV = {"TWILIO_AUTH_TOKEN": "local-dev-twilio-token"}


class HostReceiver(WebhookReceiver):
    """The receiver on every test host's gateway address; remembers which host each delivery came from."""

    def __init__(self) -> None:
        super().__init__()
        self.host_of: dict[str, str] = {}  # webhook-id → gateway address it arrived on

    async def _handle(self, request: web.Request) -> web.Response:
        response = await super()._handle(request)
        if response.status < 300:
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            self.host_of[request.headers["webhook-id"]] = sockname[0] if sockname else ""
        return response

    async def start_on(self, addresses: list[str]) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        for address in addresses:
            site = web.TCPSite(self._runner, address, self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


class HAProxy:
    """HAProxy in front of the instances: websockets balanced round-robin, health checked on /readyz."""

    def __init__(self, servers: list[str], workdir: Path) -> None:
        self.servers = servers
        self.workdir = workdir
        self.stats = workdir / "haproxy.sock"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        for _ in range(20):  # haproxy cannot bind port 0: pick a free port, retry if it was taken meanwhile
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            cfg = self.workdir / "haproxy.cfg"
            backends = "\n".join(f"  server h{i} {addr}:{TWILIO_PORT} check" for i, addr in enumerate(self.servers, 1))
            cfg.write_text(f"""
global
  stats socket {self.stats} mode 600 level admin
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout tunnel 1h
frontend calls
  bind 127.0.0.1:{port}
  default_backend daemons
backend daemons
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 200ms fall 1 rise 1 port {HTTP_PORT}
{backends}
""")
            proc = subprocess.Popen(["haproxy", "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            try:
                err = proc.communicate(timeout=1.0)[1]
            except subprocess.TimeoutExpired:
                self.proc, self.port = proc, port  # still running after 1 s: it bound its port
                return
            if b"cannot bind" not in err and b"Address already in use" not in err:
                raise RuntimeError(f"haproxy did not start: {err.decode(errors='replace')}")
        raise RuntimeError("haproxy found no free port")

    def server_states(self) -> dict[str, str]:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r["status"] for r in rows if r["pxname"] == "daemons" and r["svname"].startswith("h")}

    async def wait_states(self, want: dict[str, str], timeout: float = 20.0) -> None:
        """Poll the balancer's own view of its servers (there is no event to wait on)."""
        async def reached() -> bool:
            return all(self.server_states().get(k, "").startswith(v) for k, v in want.items())

        await wait_until(reached, timeout, f"haproxy servers {want}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.communicate(timeout=10)  # reaps it and closes its stderr pipe


def host_config(path: Path, *, outbox: Path, webhook_url: str) -> Path:
    """The e2e config, listening on the test host's own address on fixed ports (the balancer's targets),
    with a short retry so the restart in the test delivers without waiting minutes."""
    write_config(path, outbox=outbox, webhook_url=webhook_url)
    text = path.read_text()
    for old, new in (('[http]\nlisten = "127.0.0.1:0"', f'[http]\nlisten = "0.0.0.0:{HTTP_PORT}"'),
                     ('[ingest.websocket]\nlisten = "127.0.0.1:0"',
                      f'[ingest.websocket]\nlisten = "0.0.0.0:{TWILIO_PORT}"'),
                     ("[outbox]\n", "[outbox]\nretry_schedule_s = [0.5]\nmax_attempts = 1000\n")):
        assert old in text
        text = text.replace(old, new)
    path.write_text(text)
    return path


async def metric(session: ClientSession, address: str, name: str) -> float:
    async with session.get(f"http://{address}:{HTTP_PORT}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#") and line[len(name)] in " {")


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll another process's observable state (its /metrics) every 0.1 s, bounded by `timeout`."""
    for _ in range(int(timeout / 0.1)):
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def loadgen(url: str, calls: int, *extra: str) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await start_loadgen(url, "--calls", str(calls), "--clip", "marked", "--track", "both",
                               "--other-clip", "clean", *extra)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_two_hosts_behind_haproxy(tmp_path: Path) -> None:
    tag = str(os.getpid() % 100000)
    receiver = HostReceiver()
    with netns.test_hosts(2, tag) as hosts:
        await receiver.start_on([h.gateway for h in hosts])
        configs = [host_config(tmp_path / f"h{i}.toml", outbox=tmp_path / f"outbox-h{i}.sqlite3",
                               webhook_url=f"http://{host.gateway}:{receiver.port}/hook")
                   for i, host in enumerate(hosts)]
        daemons: list[DaemonProcess | None] = []
        balancer = HAProxy([h.address for h in hosts], tmp_path)
        try:
            for host, cfg in zip(hosts, configs, strict=True):
                daemons.append(await start_daemon(cfg, env=TOKEN_ENV, prefix=tuple(host.command())))
            balancer.start()
            await balancer.wait_states({"h1": "UP", "h2": "UP"})
            url = f"ws://127.0.0.1:{balancer.port}/twilio"
            a, b = hosts
            async with ClientSession() as http:
                # 1. spread: four calls, round-robin over both hosts; every alert and summary verified
                async with loadgen(url, 4, "--ramp-s", "1") as lg:
                    assert await lg.wait() == 0
                await receiver.wait_for(lambda: len(receiver.of_type("call.summary")) == 4, 60)
                assert len(receiver.of_type("call.spoof_detected")) == 4
                spread = {receiver.host_of[d.webhook_id] for d in receiver.of_type("call.summary")}
                assert spread == {a.gateway, b.gateway}

                # 2. drain: calls in flight on both; SIGTERM to host a; new calls go to b; a's calls finish
                async with loadgen(url, 2) as first:
                    await wait_until(lambda: _both_busy(http, hosts), 30, "calls on both hosts")
                    da = daemons[0]
                    assert da is not None
                    da.proc.send_signal(signal.SIGTERM)
                    await balancer.wait_states({"h1": "DOWN", "h2": "UP"})
                    b_before = await metric(http, b.address, "spoofwatch_calls_active")
                    async with loadgen(url, 2) as second:
                        await wait_until(lambda: _active_at_least(http, b.address, b_before + 2), 30,
                                         "new calls on host b")
                        assert await second.wait() == 0
                    assert await first.wait() == 0
                assert await da.stop(timeout=60) == 0
                await receiver.wait_for(lambda: len(receiver.of_type("call.summary")) == 8, 60)
                drained = [d for d in receiver.of_type("call.summary")[4:]
                           if receiver.host_of[d.webhook_id] == a.gateway]
                assert drained, "the drained host's call finished and was summarised"

                # 3. kill: host a back; its alerts pending (receiver failing); SIGKILL; b takes new calls;
                #    a restarted on the same outbox delivers what it had pending
                daemons[0] = await start_daemon(configs[0], env=TOKEN_ENV, prefix=tuple(a.command()))
                await balancer.wait_states({"h1": "UP", "h2": "UP"})
                receiver.status = 503
                async with loadgen(url, 2) as third:
                    assert await third.wait() == 0
                await wait_until(lambda: _committed(http, a.address, 2), 30, "host a committed its events")
                daemons[0].kill()
                await daemons[0].proc.wait()
                await balancer.wait_states({"h1": "DOWN", "h2": "UP"})
                done_b = await metric(http, b.address, "spoofwatch_calls_total")
                async with loadgen(url, 1) as fourth:
                    assert await fourth.wait() == 0
                assert await metric(http, b.address, "spoofwatch_calls_total") == done_b + 1
                receiver.status = 200
                daemons[0] = await start_daemon(configs[0], env=TOKEN_ENV, prefix=tuple(a.command()))
                # host a's pending alert and summary arrive after its restart, in either order
                await receiver.wait_for(lambda: len(receiver.of_type("call.summary")) == 11
                                        and len(receiver.of_type("call.spoof_detected")) == 11, 60)
                assert receiver.rejected == 0
                late = [d for d in receiver.of_type("call.summary")[8:]
                        if receiver.host_of[d.webhook_id] == a.gateway]
                assert late, "host a delivered its pending events after the restart"
                assert set(receiver.failed_ids) - {""} <= set(receiver.unique()), "same webhook-id after restart"
        finally:
            balancer.stop()
            for d in daemons:
                if d is not None:
                    d.kill()
                    with contextlib.suppress(Exception):
                        await d.stop(timeout=10)
            await receiver.stop()


async def _both_busy(http: ClientSession, hosts: list[netns.TestHost]) -> bool:
    return all([await metric(http, h.address, "spoofwatch_calls_active") >= 1 for h in hosts])


async def _active_at_least(http: ClientSession, address: str, n: float) -> bool:
    return await metric(http, address, "spoofwatch_calls_active") >= n


async def _committed(http: ClientSession, address: str, n: int) -> bool:
    return await metric(http, address, 'spoofwatch_alerts_total') >= n
