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
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_" + base64.b64encode(b"spoofwatch-e2e-test-secret-32byte").decode()


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

[ingest.twilio]
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


async def start_daemon(config: Path, *, env: dict[str, str] | None = None, timeout: float = 30.0) -> DaemonProcess:
    full_env = {**os.environ, "E2E_WEBHOOK_SECRET": SECRET, "SPOOFWATCH_CID": "77",
                "SPOOFWATCH_API_KEY": "e2e-key", "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "run", "--config", str(config),
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
        proc.kill()
        await proc.wait()
        raise
    return DaemonProcess(proc, ports, lines, reader)


async def start_loadgen(url: str, *args: str, capture: bool = False) -> asyncio.subprocess.Process:
    """`spoofwatch loadgen twilio --url URL ARGS…` as a subprocess (output captured or discarded)."""
    out = asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "loadgen", "twilio", "--url", url, *args, cwd=str(ROOT),
        stdout=out, stderr=asyncio.subprocess.STDOUT if capture else asyncio.subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def receiver(status: int = 200) -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver(status=status)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
