"""E2E harness: the daemon as a real subprocess started from the CLI, and a real HTTP webhook
receiver that verifies every delivery with the `standardwebhooks` library."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from daemon.ingest.twilio.signature import DEV_AUTH_TOKEN

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"spoofwatch-e2e-test-secret-32byte").decode()
#: The daemon's Twilio auth token (signatures are checked by default) and the one `start_loadgen` signs
#: with: the public development token `make run` uses, so a test that gives the daemon that token
#: itself, or runs the loadgen with its defaults, signs alike.
TWILIO_TOKEN = DEV_AUTH_TOKEN
#: The bearer token of the daemon's WHIP endpoint (on by default, it refuses to start without one).
WHIP_TOKEN = "e2e-whip-token"


@dataclass
class Delivery:
    webhook_id: str
    event_type: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class WebhookReceiver:
    """Verifies signatures, records deliveries, dedupes on webhook-id. `status` sets the reply."""

    status: int = 200
    extra_headers: dict[str, str] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    rejected: int = 0
    attempts: int = 0
    failed_ids: list[str] = field(default_factory=list)
    port: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def unique(self) -> dict[str, Delivery]:
        return {d.webhook_id: d for d in self.deliveries}

    def of_type(self, event_type: str) -> list[Delivery]:
        return [d for d in self.unique().values() if d.event_type == event_type]

    async def _handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        body = await request.read()
        if self.status >= 300:
            self.failed_ids.append(request.headers.get("webhook-id", ""))
            self.changed.set()
            return web.Response(status=self.status, headers=self.extra_headers)
        try:
            payload = Webhook(SECRET).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.rejected += 1
            return web.Response(status=400, text="bad signature")
        self.deliveries.append(Delivery(request.headers["webhook-id"], payload["type"], payload,
                                        dict(request.headers)))
        self.changed.set()
        return web.Response(status=204)

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, predicate: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self.changed.wait()


def write_config(path: Path, *, outbox: Path, webhook_url: str | None, extra: str = "") -> Path:
    hook = (f'[[webhook]]\nurl = "{webhook_url}"\nsecret_env = "E2E_WEBHOOK_SECRET"\n' if webhook_url else "")
    path.write_text(f"""
[daemon]
log_format = "json"
drain_timeout_s = 15.0
final_results_timeout_s = 8.0

[http]
listen = "127.0.0.1:0"

[ingest.websocket]
listen = "127.0.0.1:0"

[ingest.whip]
listen = "127.0.0.1:0"

[outbox]
path = "{outbox}"

{extra}
{hook}
""")
    return path


@dataclass
class DaemonProcess:
    proc: asyncio.subprocess.Process
    ports: dict[str, int]
    lines: list[dict[str, Any]]
    _reader: asyncio.Task[None]

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        async with asyncio.timeout(timeout):
            rc = await self.proc.wait()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._reader, 5)
        return rc

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()

    def messages(self) -> list[str]:
        return [str(line.get("msg", "")) for line in self.lines]

    async def wait_logged(self, predicate: Callable[[list[str]], bool], timeout: float = 30.0) -> None:
        """Poll the log lines (bounded in time and count) until `predicate(messages)` holds."""
        for _ in range(int(timeout / 0.05)):
            if predicate(self.messages()):
                return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"log condition not met; last lines: {self.messages()[-20:]}")

    async def metrics(self) -> str:
        """One scrape of /metrics."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.ports['http']}/metrics") as resp:
                return await resp.text()


async def start_daemon(config: Path, *, env: dict[str, str] | None = None, timeout: float = 30.0,
                       prefix: tuple[str, ...] = ()) -> DaemonProcess:
    """`prefix`: argv the daemon runs under, e.g. `ip netns exec NS` for a test host."""
    full_env = {**os.environ, "E2E_WEBHOOK_SECRET": SECRET, "SPOOFWATCH_CID": "77",
                "SPOOFWATCH_API_KEY": "e2e-key", "TWILIO_AUTH_TOKEN": TWILIO_TOKEN, "PYTHONUNBUFFERED": "1",
                "SPOOFWATCH_WHIP_TOKEN": WHIP_TOKEN, **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *prefix, sys.executable, "-m", "daemon.cli", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=full_env, cwd=str(ROOT),
    )
    lines: list[dict[str, Any]] = []
    ready: asyncio.Future[dict[str, int]] = asyncio.get_running_loop().create_future()

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            text = raw.decode(errors="replace").rstrip()
            try:
                rec = json.loads(text)
            except ValueError:
                rec = {"msg": text, "raw": True}
            if not isinstance(rec, dict):
                rec = {"msg": text, "raw": True}
            lines.append(rec)
            if "ports" in rec and not ready.done():
                ready.set_result({k: int(v) for k, v in rec["ports"].items()})
        if not ready.done():
            ready.set_exception(RuntimeError("daemon exited before it was ready:\n" +
                                             "\n".join(str(x.get("msg")) for x in lines[-30:])))

    reader = asyncio.create_task(read())
    try:
        async with asyncio.timeout(timeout):
            ports = await ready
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    return DaemonProcess(proc, ports, lines, reader)


async def start_loadgen(url: str, *args: str, capture: bool = False,
                        env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    """`spoofwatch loadgen twilio --url URL ARGS…` as a subprocess (output captured or discarded), signing
    with the daemon's TWILIO_TOKEN through $TWILIO_AUTH_TOKEN unless `env` says otherwise."""
    out = asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "loadgen", "twilio", "--url", url, *args, cwd=str(ROOT),
        env={**os.environ, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN, **(env or {})},
        stdout=out, stderr=asyncio.subprocess.STDOUT if capture else asyncio.subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def receiver(status: int = 200) -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver(status=status)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
