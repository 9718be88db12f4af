"""The live operator page's API against the real daemon (a subprocess from the CLI, embedded simulator),
a real Twilio-shaped call from `spoofwatch loadgen` and real webhook receivers: `/api/state` and the
`/api/events` stream show the call, its legs, results, the spoofed verdict and the alert with its
delivery state per endpoint; the UI token guards /api/* (never /metrics, /healthz, /readyz)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.harness import SECRET, receiver, start_daemon, start_loadgen, write_config

pytestmark = pytest.mark.slow
UI_TOKEN = "ui-test-token-7f3a"
BEARER = {"Authorization": f"Bearer {UI_TOKEN}"}
WHIP_TOKEN = "whip-test-token"


@dataclass
class SseClient:
    """Reads one /api/events stream into `events` [(name, data)], like a browser's EventSource."""

    events: list[tuple[str, Any]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read(self, resp: aiohttp.ClientResponse) -> None:
        name, data = "message", ""
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                self.events.append((name, json.loads(data)))
                self.changed.set()
                name, data = "message", ""

    def calls(self) -> dict[str, dict[str, Any]]:
        """The page's view: the last state, with every later call/result/alert event applied."""
        calls: dict[str, dict[str, Any]] = {}
        for name, data in self.events:
            if name == "state":
                calls = {c["call_id"]: c for c in data["calls"]}
            elif name == "call":
                old = {leg["leg"]: leg.get("points", []) for leg in calls.get(data["call_id"], {}).get("legs", [])}
                for leg in data["legs"]:
                    leg["points"] = old.get(leg["leg"], [])
                calls[data["call_id"]] = data
            elif name == "result" and data["call_id"] in calls:
                for leg in calls[data["call_id"]]["legs"]:
                    if leg["leg"] == data["leg"]:
                        leg["points"].append(data["point"])
        return calls

    def alerts(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, data in self.events:
            if name == "state":
                out = {a["event_id"]: a for a in data["alerts"]}
            elif name == "alert":
                out[data["event_id"]] = data
        return out

    async def wait_for(self, predicate: Callable[[], bool], timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.changed.wait()


def legs_of(call: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {leg["leg"]: leg for leg in call["legs"]}


def states(alert: dict[str, Any]) -> dict[str, str]:
    return {d["url"]: d["state"] for d in alert["deliveries"]}


async def test_live_api_shows_call_results_verdict_and_delivery_states(tmp_path: Path) -> None:
    async with receiver() as good, receiver(status=503) as failing:
        extra = f'[[webhook]]\nurl = "{failing.url}"\nsecret_env = "E2E_WEBHOOK_SECRET"\n'
        cfg = write_config(tmp_path / "c.toml", outbox=tmp_path / "o.sqlite3", webhook_url=good.url, extra=extra)
        daemon = await start_daemon(cfg, env={"SPOOFWATCH_UI_TOKEN": UI_TOKEN,
                                                 "SPOOFWATCH_WHIP_TOKEN": WHIP_TOKEN})
        base = f"http://127.0.0.1:{daemon.ports['http']}"
        sse = SseClient()
        try:
            async with aiohttp.ClientSession() as http:
                # the page itself carries no data: served to anyone; the API needs the token
                async with http.get(f"{base}/") as resp:
                    page = await resp.text()
                    assert resp.status == 200 and resp.content_type == "text/html"
                    assert 'id="try-start"' in page and "/ui/app.js" in page
                    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
                for asset, ctype in (("app.js", "text/javascript"), ("trywhip.js", "text/javascript"),
                                     ("style.css", "text/css")):
                    async with http.get(f"{base}/ui/{asset}") as resp:
                        assert resp.status == 200 and resp.content_type == ctype
                async with http.get(f"{base}/ui/../config.py") as resp:
                    assert resp.status == 404
                for path in ("/api/state", "/api/events"):
                    async with http.get(base + path) as resp:
                        assert resp.status == 401, path
                    async with http.get(base + path, headers={"Authorization": "Bearer wrong"}) as resp:
                        assert resp.status == 401, path
                for path in ("/metrics", "/healthz", "/readyz"):
                    async with http.get(base + path) as resp:
                        assert resp.status == 200, path
                async with http.post(f"{base}/api/session", headers={"Authorization": "Bearer nope"}) as resp:
                    assert resp.status == 401
                async with http.get(f"{base}/api/state", headers=BEARER) as resp:
                    assert resp.status == 200
                    state = await resp.json()
                assert state["auth"] is True and state["calls"] == [] and state["upstream"]["simulated"] is True
                assert state["upstream"]["up"] is True
                if "whip" in daemon.ports:  # the page learns where "Try it" publishes (never the token)
                    assert state["whip"]["port"] == daemon.ports["whip"] and WHIP_TOKEN not in json.dumps(state)
                assert {e["url"] for e in state["endpoints"]} == {good.url, failing.url}

            # the browser's way: POST the token once for a cookie, then EventSource sends the cookie
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
                async with browser.post(f"{base}/api/session", headers=BEARER) as resp:
                    assert resp.status == 200
                    cookie = resp.cookies["spoofwatch_ui"]
                    assert cookie["httponly"] and cookie["samesite"] == "Strict" and UI_TOKEN not in cookie.value
                events = await browser.get(f"{base}/api/events", timeout=aiohttp.ClientTimeout(total=None))
                assert events.status == 200 and events.content_type == "text/event-stream"
                reader = asyncio.create_task(sse.read(events))
                try:
                    await sse.wait_for(lambda: bool(sse.events), timeout=10)
                    assert sse.events[0][0] == "state"
                    url = f"ws://127.0.0.1:{daemon.ports['twilio']}/twilio"
                    gen = await start_loadgen(url, "--calls", "1", "--clip", "marked", "--track", "both",
                                              "--other-clip", "clean", "--param", "case=live")

                    def spoofed_and_delivered() -> bool:
                        calls = [c for c in sse.calls().values() if c["metadata"].get("case") == "live"]
                        alerts = [a for a in sse.alerts().values() if a["type"] == "call.spoof_detected"]
                        return (bool(calls) and calls[0]["verdict"] == "spoofed" and bool(alerts)
                                and states(alerts[0]).get(good.url) == "delivered"
                                and states(alerts[0]).get(failing.url) == "failing")

                    await sse.wait_for(spoofed_and_delivered, timeout=60)
                    assert await asyncio.wait_for(gen.wait(), 60) == 0
                    await sse.wait_for(lambda: any(c["state"] == "finished" for c in sse.calls().values()), 40)
                finally:
                    # the stream stays open through the checks below: shutdown must end it by itself
                    pass

                (call,) = sse.calls().values()
                legs = legs_of(call)
                assert call["ingest"] == "twilio" and call["outcome"] == "alerted" and call["alerts"] == 1
                assert legs["inbound"]["verdict"] == "spoofed" and legs["outbound"]["verdict"] == "bonafide"
                spoofed_points = [p for p in legs["inbound"]["points"] if p[4] == "spoofed" and p[3] >= 0.9]
                assert len(spoofed_points) >= 2 and all(p[0] in ("s", "u") for p in legs["inbound"]["points"])
                assert legs["outbound"]["points"] and all(p[3] < 0.5 for p in legs["outbound"]["points"])

                # /api/state says the same (the page's resync after a reconnect)
                async with browser.get(f"{base}/api/state") as resp:
                    assert resp.status == 200  # by cookie
                    state = await resp.json()
                (scall,) = state["calls"]
                slegs = legs_of(scall)
                assert scall["verdict"] == "spoofed" and scall["state"] == "finished"
                assert slegs["inbound"]["points"] == legs["inbound"]["points"]
                assert slegs["inbound"]["max_posterior"] >= 0.9 and slegs["outbound"]["max_posterior"] < 0.5
                by_type = {a["type"]: a for a in state["alerts"]}
                alert = by_type["call.spoof_detected"]
                assert alert["call_id"] == call["call_id"] and alert["leg"] == "inbound" and alert["simulated"]
                assert states(alert)[good.url] == "delivered"
                failing_row = next(d for d in alert["deliveries"] if d["url"] == failing.url)
                assert failing_row["state"] == "failing" and "503" in failing_row["detail"]
                assert "call.summary" in by_type

                # the real receiver got the very event the page shows as delivered
                await good.wait_for(lambda: bool(good.of_type("call.spoof_detected")), timeout=10)
                (delivered,) = good.of_type("call.spoof_detected")
                assert delivered.webhook_id == alert["event_id"]
                assert failing.failed_ids and alert["event_id"] in failing.failed_ids

                rc = await daemon.stop()
                async with asyncio.timeout(10):
                    await reader  # the daemon's shutdown ended the open event stream
                events.release()
        finally:
            daemon.kill()
        assert rc == 0
        assert SECRET  # the receivers verified every delivery's signature
        assert good.rejected == 0
