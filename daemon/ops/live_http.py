"""The live operator page over HTTP: `/` and `/ui/*` (static files shipped in daemon/ops/ui/),
`/api/state` (JSON), `/api/events` (server-sent events) and `POST /api/session`.

Authentication, when `[http] ui_token_env` names a set variable: `/api/state` takes
`Authorization: Bearer <token>`; since an EventSource cannot send headers, the page first POSTs the
token to `/api/session`, which answers with an HttpOnly, SameSite=Strict cookie holding an HMAC of
the token (never the token itself, never in a URL where proxies log it); `/api/*` accept either.
The page and its static files carry no data and are served to anyone. Everything is read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from daemon.configschema import read_secret
from daemon.ops.live import LiveHub

if TYPE_CHECKING:
    from daemon.app import Daemon

log = logging.getLogger("spoofwatch")

COOKIE = "spoofwatch_ui"
#: concurrent event streams; beyond it /api/events answers 503 (each holds a socket and a queue)
MAX_STREAMS = 32
#: a comment line this often keeps proxies from closing an idle stream and detects gone browsers
KEEPALIVE_S = 15.0
_STATIC = {"app.js": "text/javascript", "trywhip.js": "text/javascript", "style.css": "text/css"}
_SECURITY_HEADERS = {
    # the page talks to this daemon and, for "Try it", to the WHIP endpoint on another port
    "Content-Security-Policy": "default-src 'self'; connect-src 'self' http: https:; media-src 'self' blob:; "
                               "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _asset(name: str) -> bytes:
    return resources.files("daemon.ops").joinpath("ui", name).read_bytes()


class LiveRoutes:
    """Adds the page's routes to an aiohttp app; `token` is the UI bearer token (None: no auth)."""

    def __init__(self, hub: LiveHub, *, token: str | None, state_extra: Callable[[], dict[str, Any]]) -> None:
        self.hub = hub
        self._token = token
        self._cookie_value = (hmac.new(token.encode(), b"spoofwatch-ui-session", hashlib.sha256).hexdigest()
                              if token else "")
        self._state_extra = state_extra
        self._assets = {name: _asset(name) for name in ("index.html", *_STATIC)}
        self.streams = 0

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/ui/{name}", self._static)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/session", self._session)
        app.on_shutdown.append(self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        self.hub.close_subscribers()  # every open /api/events response returns

    # auth --------------------------------------------------------------------------------------------
    def _bearer_ok(self, request: web.Request) -> bool:
        assert self._token is not None
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self._token.encode())

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        if self._bearer_ok(request):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._cookie_value.encode())

    @staticmethod
    def _unauthorized() -> web.Response:
        return web.json_response({"error": "unauthorized: send the UI token (see [http] ui_token_env)"},
                                 status=401, headers={"WWW-Authenticate": 'Bearer realm="spoofwatch"'})

    async def _session(self, request: web.Request) -> web.Response:
        if self._token is None:
            return web.json_response({"auth": False})
        if not self._bearer_ok(request):
            return self._unauthorized()
        resp = web.json_response({"auth": True})
        # Secure when the browser reached us over HTTPS (directly, or through a TLS-terminating proxy)
        secure = request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        resp.set_cookie(COOKIE, self._cookie_value, path="/api", httponly=True, samesite="Strict", secure=secure)
        return resp

    # page --------------------------------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._assets["index.html"], content_type="text/html", charset="utf-8",
                            headers=_SECURITY_HEADERS)

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self._assets[name], content_type=_STATIC[name], charset="utf-8",
                            headers=_SECURITY_HEADERS)

    def state(self) -> dict[str, Any]:
        return {**self._state_extra(), **self.hub.snapshot(), "auth": self._token is not None}

    async def _state(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response(self.state(), headers={"Cache-Control": "no-store"})

    # events ------------------------------------------------------------------------------------------
    async def _events(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._unauthorized()
        if self.streams >= MAX_STREAMS:
            return web.json_response({"error": f"too many event streams (max {MAX_STREAMS})"}, status=503)
        wake = asyncio.Event()
        sub = self.hub.subscribe(wake.set)
        self.streams += 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        try:
            await resp.prepare(request)
            await resp.write(b"retry: 2000\n\n")
            while not sub.closed:
                wake.clear()
                frames = sub.take()
                if frames:
                    await resp.write("".join(frames).encode())
                    continue
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        await wake.wait()
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            self.streams -= 1
            self.hub.unsubscribe(sub)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await resp.write_eof()
        return resp


def whip_info(whip: Any, bound_port: int | None) -> dict[str, Any] | None:
    """What the page needs to publish to the daemon's WHIP endpoint (`[ingest.whip]`), or None when it
    is off or not listening (`bound_port`: the port it bound, None before it started). A wildcard
    listen host is left for the page to replace with the host it was loaded from."""
    if whip is None or not getattr(whip, "enabled", False) or not bound_port:
        return None
    host = str(getattr(whip, "listen", "127.0.0.1:8081")).rpartition(":")[0].strip("[]")
    port = bound_port
    path = str(getattr(whip, "path", "/whip"))
    wildcard = host in ("", "0.0.0.0", "::")
    shown = host if ":" not in host else f"[{host}]"
    return {"url": None if wildcard else f"http://{shown}:{port}{path}", "host": None if wildcard else host,
            "port": port, "path": path, "token_env": str(getattr(whip, "token_env", ""))}


def live_routes(d: Daemon) -> LiveRoutes:
    """The operator page of a daemon; its API takes a bearer token when `[http] ui_token_env` is set."""
    from daemon import __version__
    from daemon.alerts.redact import redact_url

    env = d.cfg.http.ui_token_env
    token = read_secret(env, d.environ) if env else None
    if token is None:
        log.info("live page without a token (%s unset): keep [http] listen on loopback or behind a proxy",
                 env or "ui_token_env")

    def extra() -> dict[str, Any]:  # read at each request: SIGHUP may change the policy and endpoints
        return {"version": __version__, "threshold": d.cfg.policy.spoofed_threshold,
                "endpoints": [{"endpoint": e.key, "url": redact_url(e.url)} for e in d.endpoints],
                "whip": whip_info(getattr(d.cfg.ingest, "whip", None), d.ports.get("whip"))}

    return LiveRoutes(d.live, token=token, state_extra=extra)
