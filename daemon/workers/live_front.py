"""The live operator page of a multi-worker host, served by the supervisor on `[http] listen`.

Each worker keeps the live state of its own calls (daemon.ops.live). The supervisor serves the page and
its assets from any worker, and merges the API: `/api/state` is the union of every worker's calls and
recent alerts; `/api/events` opens one event stream per worker and forwards their events (call ids are
unique across workers), replacing each worker's full `state` event with the merged state, so a browser
sees one host. Authentication stays the workers' (the same token and cookie on every worker): the
caller's Authorization header and cookie are passed through, and a 401 comes back as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import web

from daemon.ops.live_http import whip_info

log = logging.getLogger("spoofwatch.workers")

PASS_HEADERS = ("Authorization", "Cookie", "Content-Type", "X-Forwarded-Proto")
MAX_ALERTS = 100
RECONNECT_S = 1.0
INITIAL_WAIT_S = 2.0   # how long the first merged state waits for a slow worker's
KEEPALIVE_S = 15.0


def merge_states(states: Mapping[int, Mapping[str, Any]], whip: dict[str, Any] | None) -> dict[str, Any]:
    """Worker index → its /api/state document; one document for the host (sans-I/O)."""
    if not states:
        return {"calls": [], "alerts": [], "hidden_calls": 0, "upstream": {}, "whip": whip}
    ordered = [states[i] for i in sorted(states)]
    merged = dict(ordered[0])
    merged["calls"] = [c for st in ordered for c in st.get("calls", [])]
    alerts = [a for st in ordered for a in st.get("alerts", [])]
    merged["alerts"] = sorted(alerts, key=lambda a: a.get("at", a.get("time", 0)) or 0, reverse=True)[:MAX_ALERTS]
    merged["hidden_calls"] = sum(int(st.get("hidden_calls", 0) or 0) for st in ordered)
    ups = [st.get("upstream") or {} for st in ordered]
    upstream = dict(ups[0])
    if any(u.get("up") is False for u in ups):
        upstream["up"] = False  # one degraded worker: the host is degraded
    merged["upstream"] = upstream
    merged["whip"] = whip
    merged["workers"] = len(ordered)
    return merged


def _frame(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


async def _sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, str]]:
    """(event, data) of a server-sent event stream, as they arrive."""
    event, data = "message", list[str]()
    async for raw in resp.content:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


class LiveFront:
    def __init__(self, client: Callable[[], aiohttp.ClientSession], http_ports: Callable[[], dict[int, int]],
                 whip: Callable[[], dict[str, Any] | None]) -> None:
        self._client = client
        self._http_ports = http_ports
        self._whip = whip

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/", self._proxy)
        app.router.add_get("/ui/{name}", self._proxy)
        app.router.add_post("/api/session", self._proxy)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/events", self._events)

    @staticmethod
    def _headers(request: web.Request) -> dict[str, str]:
        return {h: request.headers[h] for h in PASS_HEADERS if h in request.headers}

    @staticmethod
    def _no_worker() -> web.Response:
        return web.json_response({"error": "no worker is ready"}, status=503, headers={"Retry-After": "2"})

    async def _proxy(self, request: web.Request) -> web.Response:
        """Page, assets and the session cookie: the same from every worker."""
        ports = self._http_ports()
        if not ports:
            return self._no_worker()
        port = ports[min(ports)]
        body = await request.read()
        async with self._client().request(request.method, f"http://127.0.0.1:{port}{request.path_qs}",
                                          headers=self._headers(request), data=body or None) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items()
                   if k.lower() in ("content-type", "set-cookie", "www-authenticate", "cache-control",
                                    "content-security-policy", "x-content-type-options", "referrer-policy")}
            return web.Response(status=resp.status, body=data, headers=out)

    async def _state(self, request: web.Request) -> web.Response:
        ports = self._http_ports()
        if not ports:
            return self._no_worker()
        states: dict[int, dict[str, Any]] = {}
        for index, port in ports.items():
            async with self._client().get(f"http://127.0.0.1:{port}/api/state",
                                          headers=self._headers(request)) as resp:
                if resp.status != 200:
                    return web.Response(status=resp.status, body=await resp.read(),
                                        headers={k: v for k, v in resp.headers.items()
                                                 if k.lower() in ("content-type", "www-authenticate")})
                states[index] = await resp.json()
        return web.json_response(merge_states(states, self._whip()), headers={"Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        ports = self._http_ports()
        if not ports:
            return self._no_worker()
        headers = self._headers(request)
        # authorise once, the way a worker would, before the stream starts
        first = ports[min(ports)]
        async with self._client().get(f"http://127.0.0.1:{first}/api/state", headers=headers) as check:
            if check.status != 200:
                return web.Response(status=check.status, body=await check.read(),
                                    headers={k: v for k, v in check.headers.items()
                                             if k.lower() in ("content-type", "www-authenticate")})
        raw: asyncio.Queue[tuple[int, str, str]] = asyncio.Queue(maxsize=1000)
        states: dict[int, dict[str, Any]] = {}
        expected = set(ports)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        await resp.write(b"retry: 2000\n\n")
        readers = [asyncio.create_task(self._follow(i, headers, raw), name=f"live-front-{i}") for i in sorted(ports)]
        loop = asyncio.get_running_loop()
        # the first state the browser gets is every worker's: events that arrive before it are held, in order
        initial_by = loop.time() + INITIAL_WAIT_S
        held: list[bytes] | None = []
        try:
            while True:
                timeout = max(0.0, initial_by - loop.time()) if held is not None else KEEPALIVE_S
                try:
                    async with asyncio.timeout(timeout):
                        index, event, data = await raw.get()
                except TimeoutError:
                    index, event, data = -1, "", ""
                frame = b""
                if event == "state":
                    states[index] = json.loads(data)
                    frame = _frame("state", json.dumps(merge_states(states, self._whip())))
                elif event == "overflow":
                    frame = _frame("state", json.dumps(merge_states(states, self._whip())))
                elif event:
                    frame = _frame(event, data)
                if held is not None:
                    if event and event not in ("state", "overflow"):
                        held.append(frame)
                    if not (set(states) >= expected or loop.time() >= initial_by):
                        continue
                    await resp.write(_frame("state", json.dumps(merge_states(states, self._whip()))))
                    for f in held:
                        await resp.write(f)
                    held = None
                    continue
                await resp.write(frame or b": keepalive\n\n")
        except (ConnectionResetError, ConnectionError):
            pass  # the browser went away
        finally:
            for task in readers:
                task.cancel()
            for task in readers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        return resp

    async def _follow(self, index: int, headers: dict[str, str], raw: asyncio.Queue[tuple[int, str, str]]) -> None:
        """One worker's event stream into `raw`, reconnecting while the browser watches (a worker that
        restarts comes back with a full state). A browser too slow to keep up gets a resync instead of
        the backlog."""
        while True:
            port = self._http_ports().get(index)
            if port is not None:
                try:
                    async with self._client().get(f"http://127.0.0.1:{port}/api/events", headers=headers,
                                                  timeout=aiohttp.ClientTimeout(total=None)) as resp:
                        async for event, data in _sse_events(resp):
                            if raw.full():
                                while not raw.empty():
                                    raw.get_nowait()
                                raw.put_nowait((index, "overflow", ""))
                            raw.put_nowait((index, event, data))
                except (aiohttp.ClientError, ValueError, TimeoutError) as exc:
                    log.debug("live events of worker %d: %s", index, exc)
            await asyncio.sleep(RECONNECT_S)


def public_whip(cfg_whip: Any, port: int | None) -> dict[str, Any] | None:
    """The WHIP endpoint a browser should publish to: the supervisor's, not a worker's private one."""
    return whip_info(cfg_whip, port)
