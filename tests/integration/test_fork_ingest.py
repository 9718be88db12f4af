"""Every websocket fork dialect on the ONE shared listener (and AudioSocket over TCP), over real sockets on
127.0.0.1:0, wired from a parsed config as the daemon wires it, with a recording admission.

Bad input per dialect (malformed, binary before the call's identity, oversized, wrong auth, missing
identity, out of order) is a counted drop or a clear close/HTTP code, while another call on the same
listener goes on unharmed; AudioHook's signed upgrade is refused with 401 before the upgrade; its
connection probe is answered and opens no call; an oversized AudioSocket frame closes that socket."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from daemon.ingest.forks.audiosocket import frame as as_frame
from tests.integration.fork_clients import (
    AUDIOHOOK_KEY,
    WS_DIALECTS,
    AudioHookSeq,
    Plan,
    audiohook_headers,
    audiosocket_plan,
    load_clip,
    plan,
    play,
    play_audiosocket,
)
from tests.integration.fork_server import ForkServer, fork_server

CLIP = load_clip("marked")[:8000]  # 0.5 s: 25 ticks
Frames = list[str | bytes]


async def open_ws(srv: ForkServer, p: Plan, *, headers: dict[str, str] | None = None,
                  path: str | None = None) -> ClientConnection:
    return await connect(f"ws://127.0.0.1:{srv.port}{path or p.path}",
                         additional_headers=p.headers if headers is None else headers,
                         subprotocols=[Subprotocol(s) for s in p.subprotocols] or None, compression=None,
                         max_size=None, open_timeout=10)


async def closed_by_server(ws: ClientConnection, timeout: float = 10.0) -> tuple[int | None, str]:
    async with asyncio.timeout(timeout):
        await ws.wait_closed()
    return ws.close_code, ws.close_reason or ""


async def counted(srv: ForkServer, dialect: str, reason: str, at_least: float) -> None:
    """Poll (bounded) until drops{dialect,reason} reaches `at_least`."""
    for _ in range(1000):
        if srv.drops(dialect, reason) >= at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"drops{{{dialect},{reason}}} < {at_least}: {srv.all_drops(dialect)}")


class Healthy:
    """A good call of another dialect, open on the same listener while the bad input arrives."""

    def __init__(self, srv: ForkServer, dialect: str) -> None:
        self.srv = srv
        self.plan = plan(dialect, f"healthy-{dialect}-{uuid.uuid4().hex[:6]}", CLIP, CLIP,
                         authority=f"127.0.0.1:{srv.port}")
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> Healthy:
        self.ws = await open_ws(self.srv, self.plan)
        for f in self.plan.opening:
            await self.ws.send(f)
        for tick in self.plan.ticks[:10]:
            for f in tick:
                await self.ws.send(f)
        await self.srv.admission.wait(lambda: self.plan.call_id in self.srv.admission.calls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.ws is not None
        if exc[0] is not None:
            await self.ws.close()
            return
        call = self.srv.admission.calls[self.plan.call_id]
        assert call.end_reason is None, f"the healthy call was touched: {call.end_reason}"
        for tick in self.plan.ticks[10:]:
            for f in tick:
                await self.ws.send(f)
        for f in self.plan.closing:
            await self.ws.send(f)
        await self.ws.close()
        await self.srv.admission.wait(lambda: call.end_reason is not None)
        assert call.end_reason in ("stop", "socket_closed", "hangup", "end", "disconnected"), call.end_reason
        per_leg = {name: sink.bytes_in for name, sink in call.legs.items()}
        assert set(per_leg) == set(self.plan.legs) and all(per_leg.values()), per_leg
        assert len(set(per_leg.values())) == 1, per_leg  # every leg got all of its audio


def _edit(frame: str | bytes, change: Callable[[dict[str, object]], None]) -> str:
    msg = json.loads(frame)
    change(msg)
    return json.dumps(msg)


def _without(*path: str) -> Callable[[dict[str, object]], None]:
    def change(msg: dict[str, object]) -> None:
        target: dict[str, object] = msg
        for key in path[:-1]:
            inner = target[key]
            assert isinstance(inner, dict)
            target = inner
        target.pop(path[-1], None)
    return change


@dataclass(frozen=True)
class Bad:
    """Frames sent on a fresh connection → drop `reason` counted; `close`: the code the server closes
    with (None: it keeps the connection, the client closes); `status`: refused before the upgrade."""

    name: str
    frames: Callable[[Plan], Frames]
    reason: str
    close: int | None = None
    status: int | None = None
    headers: Callable[[Plan], dict[str, str]] | None = None
    path: str | None = None


def _audio(p: Plan, n: int = 3) -> Frames:
    return [f for tick in p.ticks[:n] for f in tick]


OVERSIZE = Bad("oversized", lambda p: [*p.opening, "x" * 70000], "oversize", close=1009)
MALFORMED = Bad("malformed", lambda p: [*p.opening, "{not json", *_audio(p)], "invalid_json")
JSON_BINARY = Bad("binary_before_start", lambda p: [b"\x00" * 320, *p.opening, *_audio(p)], "binary_frame")
MEDIA_FIRST = Bad("out_of_order_media_before_start", lambda p: [*_audio(p, 1), *p.opening], "media_before_start")
SECRET_WRONG = "wrong-secret"

SCENARIOS: dict[str, list[Bad]] = {
    "telnyx": [MALFORMED, JSON_BINARY, OVERSIZE, MEDIA_FIRST,
               Bad("wrong_auth", lambda p: p.opening, "auth_invalid", status=401,
                   headers=lambda p: {"x-telnyx-streaming-auth-token": SECRET_WRONG}),
               Bad("missing_auth", lambda p: p.opening, "auth_missing", status=401, headers=lambda p: {}),
               Bad("missing_identity",
                   lambda p: [p.opening[0], _edit(p.opening[1], _without("start", "call_control_id"))],
                   "bad_start", close=1002)],
    "plivo": [MALFORMED, JSON_BINARY, OVERSIZE, MEDIA_FIRST,
              Bad("wrong_auth", lambda p: [_edit(p.opening[0], lambda m: m.update(extra_headers="token=nope"))],
                  "unauthorized", close=1008),
              Bad("missing_identity", lambda p: [_edit(p.opening[0], _without("start", "callId"))], "bad_start",
                  close=1002)],
    "exotel": [MALFORMED, JSON_BINARY, OVERSIZE, MEDIA_FIRST,
               Bad("wrong_auth", lambda p: p.opening, "auth_invalid", status=401,
                   headers=lambda p: {"Authorization": "Basic ZXhva2V5Om5vcGU="}),
               Bad("missing_auth", lambda p: p.opening, "auth_missing", status=401, headers=lambda p: {}),
               Bad("missing_identity", lambda p: [p.opening[0], _edit(p.opening[1], _without("start", "call_sid"))],
                   "bad_start", close=1002)],
    "vonage": [MALFORMED, OVERSIZE,
               Bad("binary_before_start", lambda p: [*_audio(p, 1), *p.opening, *_audio(p)], "audio_before_start"),
               Bad("wrong_auth", lambda p: [_edit(p.opening[0], lambda m: m.update(token="nope"))], "unauthorized",
                   close=1008),
               Bad("missing_identity", lambda p: [_edit(p.opening[0], _without("call_uuid"))], "missing_identity",
                   close=1008)],
    "freeswitch": [OVERSIZE,
                   Bad("malformed_audio", lambda p: [*p.opening, b"\x00" * 3, *_audio(p)], "misaligned_frame"),
                   Bad("wrong_auth", lambda p: [_edit(p.opening[0], lambda m: m.update(token="nope"))],
                       "unauthorized", close=1008),
                   Bad("missing_identity", lambda p: [*p.opening, *_audio(p)], "missing_identity", close=1008,
                       path="/freeswitch")],
    "jambonz": [MALFORMED, OVERSIZE,
                Bad("binary_before_start", lambda p: [*_audio(p, 1), *p.opening, *_audio(p)], "audio_before_start"),
                Bad("wrong_auth", lambda p: p.opening, "auth_missing", status=401, headers=lambda p: {}),
                Bad("missing_identity", lambda p: [_edit(p.opening[0], _without("callSid"))], "bad_start",
                    close=1002)],
    "asterisk_ws": [MALFORMED, OVERSIZE,
                    Bad("wrong_auth", lambda p: [_edit(p.opening[0], lambda m: m["channel_variables"].update(  # type: ignore[union-attr]
                        TOKEN="nope"))], "unauthorized", close=1008),
                    Bad("missing_identity", lambda p: [_edit(_edit(p.opening[0], _without("channel_id")),
                                                             _without("connection_id"))], "bad_start", close=1002),
                    # audio before MEDIA_START is held; a socket that closes before it never had an identity
                    Bad("binary_before_start_then_close", lambda p: _audio(p), "missing_identity")],
    "audiohook": [OVERSIZE,
                  Bad("malformed", lambda p: [*p.opening, "{not json"], "invalid_json", close=1000),
                  Bad("binary_before_open", lambda p: [b"\xff" * 320], "audio_before_open"),
                  Bad("out_of_order_seq", lambda p: [*p.opening, _edit(p.closing[0], lambda m: m.update(seq=7))],
                      "bad_seq", close=1000),
                  Bad("missing_identity", lambda p: [_edit(p.opening[0], _without("parameters", "conversationId"))],
                      "bad_open", close=1000)],
}
HEALTHY_PEER = {d: "plivo" for d in WS_DIALECTS} | {"plivo": "telnyx"}


@pytest.mark.parametrize("dialect", WS_DIALECTS)
async def test_bad_input_is_counted_or_closed_and_another_call_goes_on(dialect: str) -> None:
    async with fork_server() as srv, Healthy(srv, HEALTHY_PEER[dialect]):
        for bad in SCENARIOS[dialect]:
            p = plan(dialect, f"bad-{dialect}-{bad.name}", CLIP, CLIP, authority=f"127.0.0.1:{srv.port}")
            before = srv.drops(dialect, bad.reason)
            headers = bad.headers(p) if bad.headers is not None else None
            if bad.status is not None:
                with pytest.raises(InvalidStatus) as refused:
                    await open_ws(srv, p, headers=headers, path=bad.path)
                assert refused.value.response.status_code == bad.status, bad.name
                assert srv.drops(dialect, bad.reason) == before + 1, bad.name
                continue
            ws = await open_ws(srv, p, headers=headers, path=bad.path)
            if p.subprotocols:
                assert ws.subprotocol == p.subprotocols[0]
            for f in bad.frames(p):
                await ws.send(f)
            if bad.close is None:
                if bad.reason != "missing_identity":  # that one is counted when the socket closes
                    await counted(srv, dialect, bad.reason, before + 1)
                await ws.close()
            else:
                code, reason = await closed_by_server(ws)
                assert (code, reason[:len(bad.reason)]) == (bad.close, bad.reason) or \
                    (bad.close == 1009 and code == 1009), (bad.name, code, reason)
            await counted(srv, dialect, bad.reason, before + 1)
            call = srv.admission.calls.get(p.call_id)
            if call is not None and bad.close is not None:  # a fatal problem ends the call it started
                await srv.admission.wait(lambda c=call: c.end_reason is not None)


async def test_audiohook_upgrade_auth_is_refused_with_401_before_the_upgrade() -> None:
    async with fork_server() as srv, Healthy(srv, "audiohook"):
        authority = f"127.0.0.1:{srv.port}"
        p = plan("audiohook", "ah-auth", CLIP, CLIP, authority=authority)
        reused = audiohook_headers(authority, "/audiohook")
        cases = [
            ("signature_mismatch", {**audiohook_headers(authority, "/audiohook", secret_b64="d3Jvbmc=")}),
            ("signature_expired", audiohook_headers(authority, "/audiohook", created=int(time.time()) - 120)),
            ("api_key_unknown", audiohook_headers(authority, "/audiohook", api_key="someone-else")),
            ("api_key_missing", {k: v for k, v in reused.items() if k != "x-api-key"}),
            ("signature_missing", {k: v for k, v in reused.items() if not k.startswith("signature")}),
        ]
        first = await open_ws(srv, p, headers=reused)  # a good signed upgrade: accepted once
        await first.close()
        cases.append(("signature_replayed", reused))
        for reason, headers in cases:
            before = srv.drops("audiohook", reason)
            with pytest.raises(InvalidStatus) as refused:
                await open_ws(srv, p, headers=headers)
            assert refused.value.response.status_code == 401, reason
            assert srv.drops("audiohook", reason) == before + 1, reason
        assert "ah-auth" not in srv.admission.calls
        assert AUDIOHOOK_KEY not in json.dumps(srv.all_drops("audiohook"))


async def test_audiohook_probe_is_answered_and_opens_no_call() -> None:
    async with fork_server() as srv:
        authority = f"127.0.0.1:{srv.port}"
        session = str(uuid.uuid4())
        seq = AudioHookSeq(session)
        probe = Plan("audiohook", "probe", "/audiohook", ("customer", "agent"),
                     audiohook_headers(authority, "/audiohook", session_id=session),
                     opening=[seq.open("00000000-0000-0000-0000-000000000000")])
        seq.seq = 1
        probe.ticks = [[b"\xff" * 320]] * 3
        probe.closing = [seq.msg("close", {"reason": "end"})]
        replies: list[str] = []
        assert await play(srv.port, probe, realtime=False, replies=replies) in (1000, None)
        kinds = [json.loads(r)["type"] for r in replies]
        assert kinds == ["opened", "closed"], kinds
        assert srv.admission.calls == {}


async def test_ping_is_answered_with_pong_on_the_socket() -> None:
    async with fork_server() as srv:
        p = plan("audiohook", "ah-ping", CLIP, CLIP, authority=f"127.0.0.1:{srv.port}")
        ws = await open_ws(srv, p)
        await ws.send(p.opening[0])
        opened = json.loads(await asyncio.wait_for(ws.recv(), 10))
        session = opened["id"]
        seq = AudioHookSeq(session)
        seq.seq = 1
        await ws.send(seq.msg("ping", {}))
        pong = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert (opened["type"], pong["type"], pong["clientseq"]) == ("opened", "pong", 2)
        await ws.close()
        await srv.admission.wait(lambda: srv.admission.calls["ah-ping"].end_reason is not None)


async def test_audiosocket_oversize_frame_closes_that_socket_only() -> None:
    async with fork_server() as srv:
        good = uuid.uuid4()
        good_ticks = audiosocket_plan(good, CLIP)
        healthy = asyncio.create_task(play_audiosocket(srv.audiosocket_port, good_ticks))
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.audiosocket_port)
        bad = uuid.uuid4()
        writer.write(as_frame(0x01, bad.bytes) + bytes([0x10]) + (20000).to_bytes(2, "big") + b"\x00" * 100)
        await writer.drain()
        async with asyncio.timeout(10):
            assert await reader.read() == b""  # closed by the server
        writer.close()
        await writer.wait_closed()
        await counted(srv, "audiosocket", "oversize_frame", 1)
        await srv.admission.wait(lambda: srv.admission.calls[str(bad)].end_reason is not None)
        assert srv.admission.calls[str(bad)].end_reason == "protocol_error:oversize_frame"
        await asyncio.wait_for(healthy, 30)
        call = srv.admission.calls[str(good)]
        assert call.end_reason == "hangup" and call.legs["channel"].bytes_in == len(CLIP) * 2


async def test_capacity_and_unknown_paths_are_refused_before_the_upgrade() -> None:
    async with fork_server(extra="") as srv:
        p = plan("plivo", "cap", CLIP, CLIP)
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(srv, p, path="/nowhere")
        assert refused.value.response.status_code == 404
        srv.routes["plivo"].stop_accepting()
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(srv, p)
        assert refused.value.response.status_code == 503


async def test_per_message_deflate_only_where_the_dialect_allows_it() -> None:
    from daemon.clock import SystemClock
    from daemon.configingest import WebsocketIngestConfig
    from daemon.ingest.forks.plivo import PlivoStreamParser
    from daemon.ingest.websocket.forkroute import Dialect, ForkWebsocketIngest
    from daemon.ingest.websocket.listener import WebsocketListener
    from daemon.ops.metrics import Metrics
    from tests.integration.fork_server import RecAdmission

    listener = WebsocketListener(WebsocketIngestConfig(listen="127.0.0.1:0"))
    for path, deflate in (("/deflate", True), ("/plain", False)):
        listener.add(ForkWebsocketIngest(Dialect("plivo", path, 10, lambda _r, _t: PlivoStreamParser(),
                                                 compression=deflate), RecAdmission(), Metrics(), SystemClock()))
    port = await listener.start()
    try:
        negotiated = {}
        for path in ("/deflate", "/plain"):
            async with connect(f"ws://127.0.0.1:{port}{path}", compression="deflate") as ws:
                negotiated[path] = [type(e).__name__ for e in ws.protocol.extensions]
        assert negotiated == {"/deflate": ["PerMessageDeflate"], "/plain": []}
    finally:
        await listener.close()


async def test_shutdown_ends_open_calls_and_closes_their_sockets_going_away() -> None:
    async with fork_server() as srv:
        p = plan("jambonz", "shut-1", CLIP, CLIP)
        ws = await open_ws(srv, p)
        await ws.send(p.opening[0])
        await srv.admission.wait(lambda: "shut-1" in srv.admission.calls)
        for route in srv.routes.values():
            route.stop_accepting()
        with pytest.raises(InvalidStatus) as refused:
            await open_ws(srv, plan("jambonz", "shut-2", CLIP, CLIP))
        assert refused.value.response.status_code == 503
        await srv.listener.close()
        code, _ = await closed_by_server(ws)
        assert code == 1001 and srv.admission.calls["shut-1"].end_reason == "shutdown"
