"""The supervisor's public HTTP surfaces, in front of the workers' private loopback listeners:

- `[http] listen`: /metrics (every worker's exposition merged, plus the supervisor's own), /healthz
  (200 only when every worker is up and healthy), /readyz (200 while the host accepts calls: not
  stopping, at least one worker ready), and the live operator page over every worker (live_front.py);
- `[ingest.rtp] control_listen`: POST allocates on the worker with the most free ports and answers with
  that worker's ports; DELETE goes to the worker that owns the call; GET lists every worker's sessions;
- `[ingest.whip] listen`: POST goes to the next ready worker, and its `Location` gets the worker's index
  (`/whip/w<n>/<id>`), so DELETE on it reaches the worker that owns the session.

Requests carry the caller's Authorization header through: the workers check the tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import Metric

from daemon.config import Config, parse_hostport
from daemon.workers.live_front import LiveFront, public_whip
from daemon.workers.merge import merge_expositions

log = logging.getLogger("spoofwatch.workers")

#: request headers forwarded to a worker (hop-by-hop and Host are not)
FORWARD_HEADERS = ("Authorization", "Content-Type", "Accept", "Origin", "If-Match",
                   "Access-Control-Request-Method", "Access-Control-Request-Headers")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
WORKER_TIMEOUT = aiohttp.ClientTimeout(total=15)


class WorkersView:
    """What the front needs of the supervisor: the ready workers' private ports and its own state."""

    def __init__(self, ports: Callable[[], Mapping[int, Mapping[str, int]]], *, count: int,
                 stopping: Callable[[], bool], unhealthy: Callable[[], list[str]],
                 own_metrics: Callable[[], list[Metric]],
                 describe: Callable[[], dict[int, dict[str, Any]]] = dict) -> None:
        self.ports = ports
        self.describe = describe
        self.count = count
        self.stopping = stopping
        self.unhealthy = unhealthy
        self.own_metrics = own_metrics

    def with_port(self, name: str) -> dict[int, int]:
        return {i: p[name] for i, p in sorted(self.ports().items()) if name in p}


class Front:
    def __init__(self, cfg: Config, view: WorkersView) -> None:
        self.cfg = cfg
        self.view = view
        self._runners: list[web.AppRunner] = []
        self._client: aiohttp.ClientSession | None = None
        self._rtp_owner: dict[str, int] = {}
        self._whip_turn = itertools.count()
        self.ports: dict[str, int] = {}

    async def start(self) -> dict[str, int]:
        self._client = aiohttp.ClientSession(timeout=WORKER_TIMEOUT)
        ops = web.Application()
        ops.router.add_get("/metrics", self._metrics)
        ops.router.add_get("/healthz", self._healthz)
        ops.router.add_get("/readyz", self._readyz)
        whip_cfg = getattr(self.cfg.ingest, "whip", None)
        LiveFront(self._session, lambda: self.view.with_port("http"),
                  lambda: public_whip(whip_cfg, self.ports.get("whip"))).add_to(ops)
        self.ports["http"] = await self._serve(ops, self.cfg.http.listen)
        if self.cfg.ingest.rtp.enabled:
            rtp = web.Application()
            rtp.router.add_post("/v1/rtp/sessions", self._rtp_create)
            rtp.router.add_get("/v1/rtp/sessions", self._rtp_list)
            rtp.router.add_delete("/v1/rtp/sessions/{call_id}", self._rtp_delete)
            self.ports["rtp_control"] = await self._serve(rtp, self.cfg.ingest.rtp.control_listen)
        whip_cfg = getattr(self.cfg.ingest, "whip", None)
        if whip_cfg is not None and whip_cfg.enabled:
            whip = web.Application()
            whip.router.add_route("*", whip_cfg.path, self._whip)
            whip.router.add_route("*", whip_cfg.path + "/{tail:.*}", self._whip)
            self.ports["whip"] = await self._serve(whip, whip_cfg.listen)
        return self.ports

    def _session(self) -> aiohttp.ClientSession:
        assert self._client is not None
        return self._client

    async def _serve(self, app: web.Application, listen: str) -> int:
        host, port = parse_hostport(listen)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        sockets = getattr(site._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def close(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ops ---------------------------------------------------------------------------------------
    async def _get_text(self, port: int, path: str) -> tuple[int, str]:
        assert self._client is not None
        async with self._client.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status, await resp.text()

    async def _metrics(self, request: web.Request) -> web.Response:
        ports = self.view.with_port("http")
        results = await asyncio.gather(*(self._get_text(p, "/metrics") for p in ports.values()),
                                       return_exceptions=True)
        texts = {i: r[1] for i, r in zip(ports, results, strict=True) if not isinstance(r, BaseException)}
        body = merge_expositions(texts, self.view.own_metrics())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        ports = self.view.with_port("http")
        results = await asyncio.gather(*(self._get_text(p, "/healthz") for p in ports.values()),
                                       return_exceptions=True)
        workers: dict[str, Any] = {str(i): {"process": d} for i, d in self.view.describe().items()}
        problems = list(self.view.unhealthy())
        for i, r in zip(ports, results, strict=True):
            if isinstance(r, BaseException):
                problems.append(f"worker {i}: /healthz unreachable ({r.__class__.__name__})")
                continue
            status, text = r
            with contextlib.suppress(ValueError):
                workers.setdefault(str(i), {})["health"] = json.loads(text)
            if status != 200:
                problems.append(f"worker {i}: /healthz {status}")
        body = {"workers": workers, "count": self.view.count, "problems": problems}
        return web.json_response(body, status=503 if problems else 200)

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = len(self.view.with_port("http"))
        ok = not self.view.stopping() and ready > 0
        return web.Response(status=200 if ok else 503, text=f"{'ready' if ok else 'not ready'}: "
                            f"{ready}/{self.view.count} workers ready\n")

    # forwarding --------------------------------------------------------------------------------
    async def _forward(self, request: web.Request, port: int, path_qs: str, body: bytes) -> web.Response:
        assert self._client is not None
        headers = {h: request.headers[h] for h in FORWARD_HEADERS if h in request.headers}
        async with self._client.request(request.method, f"http://127.0.0.1:{port}{path_qs}", headers=headers,
                                        data=body or None, allow_redirects=False) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
            return web.Response(status=resp.status, body=data, headers=out)

    @staticmethod
    def _unavailable(detail: str) -> web.Response:
        return web.json_response({"error": detail}, status=503, headers={"Retry-After": "2"})

    # RTP control API ---------------------------------------------------------------------------
    async def _rtp_create(self, request: web.Request) -> web.Response:
        body = await request.read()
        ports = self.view.with_port("rtp_control")
        loads = await asyncio.gather(*(self._rtp_free(request, p) for p in ports.values()))
        # most free ports first: the least-loaded worker gets the call
        order = sorted(ports, key=lambda i: -loads[list(ports).index(i)])
        last: web.Response | None = None
        for i in order:
            resp = await self._forward(request, ports[i], request.path_qs, body)
            if resp.status == 201:
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    self._rtp_owner[json.loads(resp.body)["call_id"]] = i  # type: ignore[arg-type]
                return resp
            if resp.status != 503:
                return resp  # 400/401/409: the same answer on every worker
            last = resp
        return last or self._unavailable("no worker is ready")

    async def _rtp_free(self, request: web.Request, port: int) -> int:
        assert self._client is not None
        headers = {h: request.headers[h] for h in ("Authorization",) if h in request.headers}
        try:
            async with self._client.get(f"http://127.0.0.1:{port}/v1/rtp/sessions", headers=headers) as resp:
                return int((await resp.json()).get("free_ports", 0)) if resp.status == 200 else 0
        except (aiohttp.ClientError, ValueError, TypeError, AttributeError, TimeoutError):
            return -1

    async def _rtp_list(self, request: web.Request) -> web.Response:
        ports = self.view.with_port("rtp_control")
        sessions: list[Any] = []
        free = 0
        for port in ports.values():
            resp = await self._forward(request, port, request.path_qs, b"")
            if resp.status != 200:
                return resp
            data = json.loads(resp.body)  # type: ignore[arg-type]
            sessions += data.get("sessions", [])
            free += int(data.get("free_ports", 0))
        return web.json_response({"sessions": sessions, "free_ports": free})

    async def _rtp_delete(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        ports = self.view.with_port("rtp_control")
        owner = self._rtp_owner.get(call_id)
        order = ([owner] if owner in ports else []) + [i for i in ports if i != owner]
        last: web.Response | None = None
        for i in order:
            resp = await self._forward(request, ports[i], request.path_qs, b"")
            if resp.status != 404:
                self._rtp_owner.pop(call_id, None)
                return resp
            last = resp
        return last or web.json_response({"error": f"no session {call_id!r}"}, status=404)

    # WHIP --------------------------------------------------------------------------------------
    async def _whip(self, request: web.Request) -> web.Response:
        base = self.cfg.ingest.whip.path
        ports = self.view.with_port("whip")
        if not ports:
            return self._unavailable("no worker is ready")
        body = await request.read()
        tail = request.match_info.get("tail", "")
        if tail:
            # /whip/w<n>/<id>: the session lives on worker n
            head, _, rest = tail.partition("/")
            if not (head.startswith("w") and head[1:].isdigit() and int(head[1:]) in ports):
                return web.Response(status=404, text="no such WHIP session\n")
            path_qs = f"{base}/{rest}" + (f"?{request.query_string}" if request.query_string else "")
            return await self._forward(request, ports[int(head[1:])], path_qs, body)
        workers = list(ports)
        start = next(self._whip_turn)
        last: web.Response | None = None
        for k in range(len(workers)):  # round robin, skipping a worker at its limit
            i = workers[(start + k) % len(workers)]
            resp = await self._forward(request, ports[i], request.path_qs, body)
            if request.method != "POST" or resp.status != 503:
                location = resp.headers.get("Location")
                if location:
                    resp.headers["Location"] = _with_worker(location, base, i)
                return resp
            last = resp
        return last or self._unavailable("every worker is at its limit")


def _with_worker(location: str, base: str, index: int) -> str:
    """{base}/<id> → {base}/w<index>/<id> (absolute URLs keep their scheme and host)."""
    parts = urlsplit(location)
    path = parts.path
    if path.startswith(base + "/"):
        path = f"{base}/w{index}/{path[len(base) + 1:]}"
    return urlunsplit(parts._replace(path=path))
