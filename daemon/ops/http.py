"""The operator's HTTP endpoints: /metrics (Prometheus text, or OpenMetrics with exemplars when
asked for), /healthz (liveness with detail: 503 and `down` while a core task is down) and /readyz
(200 only while calls are accepted). /healthz is unauthenticated: its detail shows no secret
(webhook URLs are redacted)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from daemon.ops.metrics import Metrics


class OpsHttpServer:
    def __init__(self, metrics: Metrics, *, is_ready: Callable[[], bool],
                 health_detail: Callable[[], dict[str, Any]],
                 down: Callable[[], dict[str, str]] | None = None,
                 extra_routes: Callable[[web.Application], None] | None = None) -> None:
        self.metrics = metrics
        self._extra_routes = extra_routes  # the live page (daemon.ops.live_http.LiveRoutes.add_to)
        self._is_ready = is_ready
        self._health_detail = health_detail
        self._down = down  # core tasks down now, with why (daemon.ops.supervise)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if self._extra_routes is not None:
            self._extra_routes(app)
        return app

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self._app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "")
        if "application/openmetrics-text" in accept:
            body = openmetrics.generate_latest(self.metrics.registry)  # type: ignore[no-untyped-call]
            content_type = openmetrics.CONTENT_TYPE_LATEST
        else:
            body = generate_latest(self.metrics.registry)
            content_type = CONTENT_TYPE_LATEST
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp

    async def _healthz(self, request: web.Request) -> web.Response:
        down = self._down() if self._down is not None else {}
        if down:
            return web.json_response({"status": "unhealthy", "down": down, **self._health_detail()}, status=503)
        return web.json_response({"status": "ok", **self._health_detail()})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready = self._is_ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)
