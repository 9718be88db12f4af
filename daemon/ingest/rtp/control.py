"""The RTP session control API a PBX script calls to get a port per call leg (aiohttp).

    POST   /v1/rtp/sessions          {"call_id", "legs": [{"name", "codec_map": {"97": "opus/48000/2"}}],
                                      "metadata": {...}}
                                     → 201 {"call_id", "legs": [{"name", "host", "port", "rtcp_port"}]}
    DELETE /v1/rtp/sessions/{id}     → 204 (404 unknown)
    GET    /v1/rtp/sessions          → 200 {"sessions": [...], "free_ports": N}

Every request needs `Authorization: Bearer <token>`, the token read from `control_token_env`
(environment or systemd credential). Without a token the API is not started and the log says so:
then only `auto_calls` (off by default) can open RTP calls. 400 bad JSON or codec map; 401 bad
token; 409 duplicate call id; 503 no free ports or admission refused (limits, shutting down).
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from aiohttp import web

from daemon.audio.codecmap import CodecMapError, PayloadSpec, parse_map
from daemon.calls.api import CallRefused
from daemon.config import RtpIngestConfig, parse_hostport, read_secret
from daemon.ingest.rtp.server import RtpIngest
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.rtp")
MAX_BODY_BYTES = 64 * 1024


class RtpControlServer:
    def __init__(self, cfg: RtpIngestConfig, ingest: RtpIngest, metrics: Metrics) -> None:
        self.cfg = cfg
        self.ingest = ingest
        self.metrics = metrics
        self._runner: web.AppRunner | None = None
        self._token: str | None = None
        self.port = 0

    async def start(self) -> int:
        self._token = read_secret(self.cfg.control_token_env)
        if not self._token:
            log.warning("RTP control API not started: set %s (bearer token) to enable it; auto_calls=%s%s",
                        self.cfg.control_token_env, self.cfg.auto_calls,
                        "" if self.cfg.auto_calls else " (so only SIPREC can start RTP calls)")
            return 0
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._auth])
        app.router.add_post("/v1/rtp/sessions", self._create)
        app.router.add_get("/v1/rtp/sessions", self._list)
        app.router.add_delete("/v1/rtp/sessions/{call_id}", self._delete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = parse_hostport(self.cfg.control_listen)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("rtp control API on http://%s:%d/v1/rtp/sessions", host, self.port)
        return self.port

    def stop_accepting(self) -> None:
        pass  # the ingest refuses new sessions itself (503)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not self._token or not hmac.compare_digest(given.encode(), self._token.encode()):
            self.metrics.drops.labels("rtp_control", "unauthorized").inc()
            return _error(401, "missing or wrong bearer token")
        resp: web.StreamResponse = await handler(request)
        return resp

    async def _create(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        call_id = body.get("call_id")
        legs = body.get("legs", [{"name": "caller"}])
        metadata = body.get("metadata", {})
        if not isinstance(call_id, str) or not call_id or len(call_id) > 200:
            return _error(400, "call_id must be a non-empty string (≤ 200 chars)")
        if not isinstance(legs, list) or not 1 <= len(legs) <= 8:
            return _error(400, "legs must be a list of 1–8 objects")
        if not isinstance(metadata, dict):
            return _error(400, "metadata must be an object")
        names: list[str] = []
        maps: dict[str, dict[int, PayloadSpec]] = {}
        for leg in legs:
            if not isinstance(leg, dict) or not isinstance(leg.get("name"), str) or not leg["name"]:
                return _error(400, "each leg needs a name")
            if leg["name"] in names:
                return _error(400, f"duplicate leg name {leg['name']!r}")
            codec_map = leg.get("codec_map", {})
            if not isinstance(codec_map, dict):
                return _error(400, "codec_map must be an object like {\"97\": \"opus/48000/2\"}")
            try:
                maps[leg["name"]] = parse_map(codec_map)
            except CodecMapError as exc:
                return _error(400, f"leg {leg['name']!r}: {exc}")
            names.append(leg["name"])
        try:
            ports = self.ingest.allocate(call_id, names, maps, {str(k): str(v) for k, v in metadata.items()})
        except CallRefused as exc:
            if exc.reason == "duplicate_call_id":
                return _error(409, f"call {call_id!r} already has a session")
            return _error(503, f"refused: {exc.reason}")
        host = self.cfg.listen_host
        return web.json_response({"call_id": call_id, "legs": [
            {"name": n, "host": host, "port": p, "rtcp_port": p + 1} for n, p in ports.items()]}, status=201)

    async def _delete(self, request: web.Request) -> web.Response:
        if not self.ingest.end_call(request.match_info["call_id"], "control_api"):
            return _error(404, "no such session")
        return web.Response(status=204)

    async def _list(self, request: web.Request) -> web.Response:
        sessions = [{"call_id": c.call_id, "auto": c.auto,
                     "legs": [{"name": lg.name, "port": lg.port, "packets": lg.packets} for lg in c.legs.values()]}
                    for c in self.ingest.calls.values()]
        return web.json_response({"sessions": sessions, "free_ports": len(self.ingest.free_ports())})


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"error": detail}, status=status)
