"""Media-fork load generator driver: plays the frames of `forks_frames*` / `forks_audiohook` into a
daemon over real websockets (or TCP for AudioSocket), in real time or as fast as the sockets drain.

As in the Twilio loadgen: one pacer task for every call, each call on its own absolute schedule
(tick i due at start + i·tick_s, so a late wake-up never accumulates into drift), lateness measured
per message and reported, frames prepared once per run (`TemplateTicks`) and written to plain
asyncio transports, every call bounded in time. A call fails (and the run exits non-zero) when the
upgrade is refused, the server selects no subprotocol although one was offered, the server closes
with a code other than 1000, or the connection drops before the last frame.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from itertools import accumulate
from typing import Any

from websockets.exceptions import InvalidHandshake

from daemon.loadgen.forks_audiohook import AudioHookClient, AudioHookPlan
from daemon.loadgen.forks_frames import KEY_CHARS, ForkDialect, Frame
from daemon.loadgen.forks_socket import ForkSocket, Target, connect, finish_socket, wire
from daemon.loadgen.pacing import PacedCall, Pacer, failure_text, run_calls, verdict
from daemon.loadgen.wsclient import LoadResult, client_frame

PLACEHOLDER = "@" * KEY_CHARS  # never in JSON of ids and digits, nor in base64
#: what a failed call raises: refused or garbled upgrade (InvalidHandshake), network, timeouts
CALL_FAILURES: tuple[type[BaseException], ...] = (OSError, TimeoutError, ValueError, InvalidHandshake)


class TemplateTicks:
    """Every tick's frames, built once with PLACEHOLDER as key and split around it: a call's tick is
    `key.join(parts)` (one C-level join per tick and call)."""

    def __init__(self, ticks: list[list[Frame]], *, ws: bool) -> None:
        hole = PLACEHOLDER.encode()
        self.n = len(ticks)
        self.parts: list[list[bytes]] = []
        for tick in ticks:
            parts = [b""]
            for frame in tick:
                pieces = wire(frame, ws=ws).split(hole) if isinstance(frame, str) else [wire(frame, ws=ws)]
                parts[-1] += pieces[0]
                parts.extend(pieces[1:])
            self.parts.append(parts)
        self._count = [0, *accumulate(len(t) for t in ticks)]

    def take(self, key: bytes, first: int, end: int) -> tuple[bytes, int]:
        """The bytes of ticks first..end-1 for the call `key`, and how many messages they hold."""
        return b"".join(key.join(self.parts[i]) for i in range(first, end)), self._count[end] - self._count[first]


class AudioHookTicks:
    """An AudioHook call's ticks: its session's control messages (built when sent: they carry the
    live `serverseq`) and the run's shared audio frames (`framed`: ready websocket binary frames per
    channel layout) in the layout the server chose."""

    def __init__(self, client: AudioHookClient, framed: dict[tuple[str, ...], list[bytes]]) -> None:
        self.client = client
        self.n = client.n_ticks
        self.audio = framed.get(client.channels, framed[("external", "internal")])

    def take(self, key: bytes, first: int, end: int) -> tuple[bytes, int]:
        out: list[bytes] = []
        for i in range(first, end):
            tick = self.client.tick(i)
            out += [client_frame(t.encode()) for t in tick.texts]
            if tick.audio is not None:
                out.append(self.audio[tick.audio])
        return b"".join(out), len(out)


#: the media forks' pacer (one task for every call's ticks) is the Twilio loadgen's
ForkPacer = Pacer


async def run_fork_calls(dialect: ForkDialect, target: Target, *, calls: int, realtime: bool = True,
                         ramp_s: float = 0.0, timeout_s: float | None = None,
                         close_timeout_s: float = 5.0, extra_headers: dict[str, str] | None = None) -> LoadResult:
    """Play `calls` concurrent calls of `dialect` (`extra_headers` added to every upgrade, e.g. Basic
    credentials). Never raises for a failed call: see `errors`."""
    ws = dialect.transport == "ws"
    if ws and target.url is None:
        raise ValueError(f"{dialect.name} needs a websocket URL")
    template = TemplateTicks(dialect.ticks(PLACEHOLDER), ws=ws)
    if timeout_s is None:
        timeout_s = (template.n * dialect.tick_s if realtime else 0.0) + ramp_s + 30.0

    async def one_call(k: int, result: LoadResult, pacer: Pacer) -> None:
        key = str(uuid.uuid4())
        result.call_sids.append(dialect.call_id(key))
        sock: ForkSocket | None = None
        try:
            hs = dialect.handshake(key)
            async with asyncio.timeout(10):
                sock = await connect(target, {**hs.headers, **(extra_headers or {})}, hs.subprotocols)
            sock.send(dialect.opening(key))
            call = PacedCall(sock, template, key.encode(), asyncio.get_running_loop().time(), dialect.tick_s)
            await pacer.play(call, sock.closed)
            if call.sent >= template.n:
                sock.send(dialect.closing(key))
            await finish_socket(sock, close_timeout_s)
            result.record_call(dialect.call_id(key), verdict(sock, call.sent, template.n))
        except CALL_FAILURES as exc:
            result.record_call(dialect.call_id(key), failure_text(exc))
        finally:
            if sock is not None and not sock.closed.done():
                sock.abort()

    return await run_calls(one_call, calls=calls, realtime=realtime, ramp_s=ramp_s, timeout_s=timeout_s,
                           name="loadgen-forks")


async def run_audiohook_calls(plan: AudioHookPlan, url: str, *, calls: int, realtime: bool = True,
                              ramp_s: float = 0.0, timeout_s: float | None = None, open_timeout_s: float = 5.0,
                              close_timeout_s: float = 10.0) -> LoadResult:
    """Play `calls` concurrent AudioHook sessions (or connection probes). Each upgrade is signed at
    connect time; `opened` must come within `open_timeout_s`, `closed` within `close_timeout_s`."""
    from websockets.headers import build_host
    from websockets.uri import parse_uri

    uri = parse_uri(url)
    authority, target = build_host(uri.host, uri.port, uri.secure), uri.resource_name
    n_ticks = plan.client("-").n_ticks
    framed = {layout: [client_frame(f, 0x2) for f in frames] for layout, frames in plan.layouts.items()}
    if timeout_s is None:
        timeout_s = (n_ticks * 0.02 if realtime else 0.0) + ramp_s + open_timeout_s + close_timeout_s + 20.0

    async def one_call(k: int, result: LoadResult, pacer: Pacer) -> None:
        client = plan.client(str(uuid.uuid4()), realtime=realtime)
        name = "probe" if plan.probe else client.conversation_id
        result.call_sids.append(client.conversation_id)
        opened, closed = asyncio.Event(), asyncio.Event()

        def on_text(text: str) -> None:
            kind = client.receive_text(text)
            if kind == "opened":
                opened.set()
            elif kind in ("closed", "disconnect"):
                closed.set()
                opened.set()

        async def until(event: asyncio.Event, sock: ForkSocket, seconds: float) -> None:
            waiter: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait([waiter, sock.closed], timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)

        sock: ForkSocket | None = None
        sent = 0
        try:
            headers = plan.headers(client.session_id, authority=authority, target=target, now=time.time())
            async with asyncio.timeout(10):
                sock = await connect(Target(url), headers, (), on_text)
            sock.send([client.open()])
            await until(opened, sock, open_timeout_s)
            if client.opened and client.disconnect_reason is None and not plan.probe:
                call = PacedCall(sock, AudioHookTicks(client, framed), b"", asyncio.get_running_loop().time(), 0.02)
                await pacer.play(call, sock.closed)
                sent = call.sent
            if client.opened and client.disconnect_reason is None and sent >= client.n_ticks \
                    and sock.send([client.close()]):
                await until(closed, sock, close_timeout_s)
            await finish_socket(sock, close_timeout_s)
            why = verdict(sock, sent, client.n_ticks)
            if not client.opened:
                why = f"no opened within {open_timeout_s:.0f} s"
            elif client.disconnect_reason is not None:
                why = f"the server disconnected: {client.disconnect_reason}"
            elif why is None and not client.closed:
                why = f"no closed within {close_timeout_s:.0f} s of close"
            elif why is None and client.problems:
                why = "; ".join(client.problems[:3])
            result.record_call(name, why)
        except CALL_FAILURES as exc:
            result.record_call(name, failure_text(exc))
        finally:
            if sock is not None and not sock.closed.done():
                sock.abort()

    return await run_calls(one_call, calls=calls, realtime=realtime, ramp_s=ramp_s, timeout_s=timeout_s,
                           name="loadgen-forks")
