"""`spoofwatch loadgen <dialect>` over real sockets against a minimal in-test server (websockets'
asyncio server, or asyncio TCP for AudioSocket) that checks the upgrade (headers, subprotocol,
AudioHook's signature with the server's own verifier) and feeds every received frame to the
SERVER's parser from daemon.ingest.forks: each call must be a valid call there."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from daemon import cli
from daemon.ingest.forks.asterisk_ws import AsteriskWebsocketParser
from daemon.ingest.forks.audiohook import AudioHookServerParser
from daemon.ingest.forks.audiohook_signature import NonceCache, verify_audiohook_upgrade
from daemon.ingest.forks.audiosocket import AudioSocketParser
from daemon.ingest.forks.events import Audio, CallEnd, CallStart, Problem, Reply
from daemon.ingest.forks.exotel import ExotelStreamParser
from daemon.ingest.forks.freeswitch import FreeswitchForkParser
from daemon.ingest.forks.jambonz import JambonzListenParser
from daemon.ingest.forks.plivo import PlivoStreamParser
from daemon.ingest.forks.telnyx import TelnyxStreamParser
from daemon.ingest.forks.vonage import VonageStreamParser
from daemon.loadgen.forks import run_audiohook_calls, run_fork_calls
from daemon.loadgen.forks_audiohook import AudioHookPlan
from daemon.loadgen.forks_frames import Exotel, ForkDialect, Plivo, Telnyx, Vonage
from daemon.loadgen.forks_frames_pbx import AsteriskWs, AudioSocket, FreeSwitch, Jambonz
from daemon.loadgen.forks_socket import Target

API_KEY = "it-api-key"
SECRET = base64.b64encode(b"integration test client secret").decode()
DEADLINE_S = 20.0


def tone(freq: float, seconds: float, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 9000).astype(np.int16)


@dataclass
class Conn:
    headers: dict[str, str]
    path: str
    subprotocol: str | None
    events: list[Any] = field(default_factory=list)

    @property
    def start(self) -> CallStart:
        return next(e for e in self.events if isinstance(e, CallStart))

    def audio(self, leg: str) -> bytes:
        return b"".join(e.payload for e in self.events if isinstance(e, Audio) and e.leg == leg)


class ForkServer:
    """Accepts websocket upgrades that pass `check`, feeds every frame to a fresh parser."""

    def __init__(self, make_parser: Callable[[], Any], *, subprotocols: list[str] | None = None,
                 check: Callable[[Request], str | None] | None = None) -> None:
        self.make_parser, self.subprotocols, self.check = make_parser, subprotocols, check
        self.conns: list[Conn] = []
        self.refused: list[str] = []
        self.url = ""
        self._changed = asyncio.Event()

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        why = self.check(request) if self.check is not None else None
        if why is None:
            return None
        self.refused.append(why)
        return connection.respond(401, why)

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        conn = Conn({k.lower(): v for k, v in ws.request.headers.raw_items()}, ws.request.path, ws.subprotocol)
        parser = self.make_parser()
        try:
            async for msg in ws:
                events = parser.receive_text(msg) if isinstance(msg, str) else parser.receive_binary(msg)
                conn.events += events
                for e in events:
                    if isinstance(e, Reply):
                        await ws.send(e.payload)
                    elif isinstance(e, Problem) and e.fatal:
                        await ws.close(e.close_code, e.reason)
        finally:
            conn.events += parser.connection_closed()
            self.conns.append(conn)
            self._changed.set()

    async def wait_conns(self, n: int) -> list[Conn]:
        async with asyncio.timeout(DEADLINE_S):
            while len(self.conns) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.conns


@pytest.fixture
async def fork_server() -> AsyncIterator[Callable[..., Any]]:
    servers: list[Any] = []

    async def start(make_parser: Callable[[], Any], path: str, **kw: Any) -> ForkServer:
        fs = ForkServer(make_parser, **kw)
        server = await serve(fs.handler, "127.0.0.1", 0, subprotocols=fs.subprotocols,  # type: ignore[arg-type]
                             process_request=fs.process_request)
        servers.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        fs.url = f"ws://127.0.0.1:{port}{path}"
        return fs

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def header_is(name: str, value: str) -> Callable[[Request], str | None]:
    return lambda req: None if req.headers.get(name) == value else f"{name} missing or wrong"


def assert_valid_call(conn: Conn, legs: tuple[str, ...]) -> None:
    assert not [e for e in conn.events if isinstance(e, Problem)], conn.events[:3]
    assert tuple(leg.name for leg in conn.start.legs) == legs
    assert isinstance(conn.events[-1], CallEnd)
    for leg in legs:
        assert conn.audio(leg)


A, B = tone(440, 0.6), tone(1000, 0.6)
A16, B16 = tone(440, 0.6, 16000), tone(1000, 0.6, 16000)
BASIC = "Basic " + base64.b64encode(b"key:token").decode()


Case = tuple[str, Callable[[], ForkDialect], Callable[[], Any], dict[str, Any], tuple[str, ...], dict[str, str]]
CASES: list[Case] = [
    ("telnyx", lambda: Telnyx({"inbound": A, "outbound": B}, auth_token="tok", reorder=5),
     lambda: TelnyxStreamParser(expected_token="tok"), {"check": header_is("x-telnyx-streaming-auth-token", "tok")},
     ("inbound", "outbound"), {}),
    ("plivo", lambda: Plivo({"inbound": A16}, codec="l16", rate=16000, params={"sec": "s"}),
     lambda: PlivoStreamParser(expected_header=("sec", "s")), {}, ("inbound",), {}),
    ("exotel", lambda: Exotel(A), ExotelStreamParser, {"check": header_is("Authorization", BASIC)}, ("inbound",),
     {"Authorization": BASIC}),
    ("vonage", lambda: Vonage(A16), VonageStreamParser, {}, ("mixed",), {}),
    ("freeswitch", lambda: FreeSwitch(A16, B16, mix_type="stereo", rate=16000, late_metadata=4),
     lambda: FreeswitchForkParser(mix_type="stereo", sample_rate=16000), {"subprotocols": ["audio.drachtio.org"]},
     ("caller", "callee"), {}),
    ("jambonz", lambda: Jambonz(A, B, mix_type="mixed"), JambonzListenParser,
     {"subprotocols": ["audio.jambonz.org"]}, ("mixed",), {}),
    ("asterisk", lambda: AsteriskWs(A, fmt="ulaw", late_media_start=3), AsteriskWebsocketParser, {}, ("channel",), {}),
]


@pytest.mark.parametrize(("path", "dialect", "parser", "server_kw", "legs", "extra"), CASES, ids=[c[0] for c in CASES])
async def test_dialect_calls_are_valid_calls_for_the_servers_parser(
        fork_server: Any, path: str, dialect: Callable[[], ForkDialect], parser: Callable[[], Any],
        server_kw: dict[str, Any], legs: tuple[str, ...], extra: dict[str, str]) -> None:
    server = await fork_server(parser, "/" + path, **server_kw)
    d = dialect()
    result = await run_fork_calls(d, Target(url=server.url), calls=3, realtime=False, extra_headers=extra)
    assert result.calls_ok == 3, result.errors
    conns = await server.wait_conns(3)
    assert sorted(c.start.call_id for c in conns) == sorted(result.call_sids)
    offered = d.handshake("0" * 36).subprotocols
    for conn in conns:
        assert conn.path == "/" + path
        assert conn.subprotocol == (offered[0] if offered else None)
        assert_valid_call(conn, legs)
    assert result.frames_sent == 3 * sum(len(t) for t in d.ticks("0" * 36))


async def test_realtime_calls_keep_their_schedule(fork_server: Any) -> None:
    server = await fork_server(VonageStreamParser, "/vonage")
    result = await run_fork_calls(Vonage(tone(300, 0.5, 16000)), Target(url=server.url), calls=2, ramp_s=0.1)
    assert result.calls_ok == 2, result.errors
    # no frame goes out before it is due: the second call (started 50 ms in) sends its 25th at ≥ 50 + 24·20 ms
    assert result.elapsed_s >= 0.05 + 24 * 0.02
    assert sum(result.lateness_ms) == 50 and "late frames" in result.summary()
    for conn in await server.wait_conns(2):
        assert len(conn.audio("mixed")) == 25 * 640


async def test_server_without_the_subprotocol_fails_the_call(fork_server: Any) -> None:
    server = await fork_server(JambonzListenParser, "/jambonz")  # selects no subprotocol
    result = await run_fork_calls(Jambonz(A), Target(url=server.url), calls=1, realtime=False)
    assert result.calls_ok == 0 and "selected none of the subprotocols" in result.errors[0]


async def test_refused_upgrade_and_server_close_are_failures(fork_server: Any) -> None:
    refusing = await fork_server(TelnyxStreamParser, "/telnyx", check=header_is("x-telnyx-streaming-auth-token", "x"))
    result = await run_fork_calls(Telnyx({"inbound": A}, auth_token="wrong"), Target(url=refusing.url), calls=1,
                                  realtime=False)
    assert result.calls_ok == 0 and "HTTP 401" in result.errors[0]
    closing = await fork_server(lambda: PlivoStreamParser(expected_header=("sec", "s")), "/plivo")
    result = await run_fork_calls(Plivo({"inbound": A}), Target(url=closing.url), calls=1, realtime=False)
    assert result.calls_ok == 0 and "closed by the daemon: 1008" in result.errors[0]


def audiohook_check(req: Request) -> str | None:
    headers = {k.lower(): v for k, v in req.headers.raw_items()}
    v = verify_audiohook_upgrade(method="GET", authority=headers.get("host", ""), target=req.path, headers=headers,
                                 now=time.time(), api_key=API_KEY, client_secret_b64=SECRET, nonces=NONCES)
    return None if v.ok else v.reason


NONCES = NonceCache()


@pytest.mark.parametrize("probe", [False, True])
async def test_audiohook_signed_sessions(fork_server: Any, probe: bool) -> None:
    server = await fork_server(AudioHookServerParser, "/audiohook?tenant=1", check=audiohook_check)
    from daemon.audio.codecs import encode_ulaw

    plan = AudioHookPlan(encode_ulaw(A), encode_ulaw(B), api_key=API_KEY, client_secret_b64=SECRET,
                         ping_s=0.1, pause_at_s=0.2, pause_s=0.1, probe=probe)
    result = await run_audiohook_calls(plan, server.url, calls=2, realtime=True)
    assert result.calls_ok == 2, result.errors
    assert server.refused == []
    for conn in await server.wait_conns(2):
        assert conn.headers["x-api-key"] == API_KEY
        if probe:
            assert not [e for e in conn.events if isinstance(e, CallStart | Problem)]
        else:
            assert_valid_call(conn, ("customer", "agent"))
            assert conn.audio("customer") == encode_ulaw(A)
    bad = AudioHookPlan(encode_ulaw(A), encode_ulaw(B), api_key=API_KEY,
                        client_secret_b64=base64.b64encode(b"no").decode())
    result = await run_audiohook_calls(bad, server.url, calls=1, realtime=False)
    assert result.calls_ok == 0 and "HTTP 401" in result.errors[0] and server.refused == ["signature_mismatch"]


async def test_audiosocket_over_tcp() -> None:
    conns: list[list[Any]] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser, events = AudioSocketParser(), []
        while data := await reader.read(4096):
            events += parser.receive_data(data)
        events += parser.connection_closed()
        conns.append(events)
        writer.close()
        done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        d = AudioSocket(A16, rate=16000, dtmf="42")
        result = await run_fork_calls(d, Target(host="127.0.0.1", port=port), calls=2, realtime=False)
        assert result.calls_ok == 2, result.errors
        async with asyncio.timeout(DEADLINE_S):
            while len(conns) < 2:
                done.clear()
                await done.wait()
        for events in conns:
            assert not [e for e in events if isinstance(e, Problem)]
            start = next(e for e in events if isinstance(e, CallStart))
            assert start.call_id in result.call_sids
            assert isinstance(events[-1], CallEnd) and events[-1].reason == "hangup"
            assert b"".join(e.payload for e in events if isinstance(e, Audio)) == A16.astype("<i2").tobytes()
    finally:
        server.close()
        await server.wait_closed()


async def test_cli_plays_the_bundled_clips(fork_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server = await fork_server(lambda: FreeswitchForkParser(mix_type="stereo", sample_rate=8000), "/freeswitch",
                               subprotocols=["audio.drachtio.org"])
    argv = ["loadgen", "freeswitch", "--url", server.url, "--mix", "stereo", "--clip", "marked",
            "--other-clip", "clean", "--late-metadata", "--fast", "--calls", "2", "--param", "tenant=t"]
    rc = await asyncio.to_thread(cli.main, argv)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "calls: 2/2" in out
    for conn in await server.wait_conns(2):
        assert_valid_call(conn, ("caller", "callee"))
        assert conn.start.metadata["tenant"] == "t"
        assert len(conn.audio("caller")) == len(conn.audio("callee")) >= 8 * 16000


def test_cli_failures_exit_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["loadgen", "vonage", "--url", "ws://127.0.0.1:9/vonage", "--clip", "/nonexistent.wav"]) == 2
    assert "cannot read clip" in capsys.readouterr().err
    assert cli.main(["loadgen", "audiosocket", "--port", "9", "--fast", "--clip", "clean"]) == 1  # nothing listens
    assert "calls: 0/1" in capsys.readouterr().out
