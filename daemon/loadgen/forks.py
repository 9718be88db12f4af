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
import heapq
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Protocol

from websockets.exceptions import InvalidHandshake

from daemon.loadgen.forks_audiohook import AudioHookClient, AudioHookPlan
from daemon.loadgen.forks_frames import KEY_CHARS, ForkDialect, Frame
from daemon.loadgen.forks_socket import ForkSocket, Target, connect, finish_socket, wire
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


class TickSource(Protocol):
    n: int

    def take(self, key: bytes, first: int, end: int) -> tuple[bytes, int]: ...


# pacing ------------------------------------------------------------------------------------------
@dataclass(eq=False)
class PacedCall:
    sock: ForkSocket
    source: TickSource
    key: bytes
    tick_s: float
    due0: float
    sent: int = 0
    done: asyncio.Future[None] | None = None


class ForkPacer:
    """One task sends every call's due ticks (see the Twilio loadgen's `Pacer`): a heap ordered by
    when each call's next tick is due; in fast mode, as fast as each socket drains."""

    TICK_S = 0.002

    def __init__(self, result: LoadResult, *, realtime: bool) -> None:
        self.result, self.realtime = result, realtime
        self.calls: set[PacedCall] = set()
        self._heap: list[tuple[float, int, PacedCall]] = []
        self._order = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def add(self, call: PacedCall) -> None:
        loop = asyncio.get_running_loop()
        call.done = loop.create_future()
        self.calls.add(call)
        heapq.heappush(self._heap, (call.due0, next(self._order), call))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="loadgen-forks-pacer")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            if not self.calls:
                heap.clear()
                self._wake.clear()
                await self._wake.wait()
            now = loop.time()
            if self.realtime:
                while heap and heap[0][0] <= now:
                    call = heapq.heappop(heap)[2]
                    if call in self.calls and self._send_due(call, now) is not None:
                        heapq.heappush(heap, (call.due0 + call.sent * call.tick_s, next(self._order), call))
                delay = min(self.TICK_S, heap[0][0] - loop.time()) if heap else self.TICK_S
                await asyncio.sleep(max(0.0, delay))
            else:
                sent = False
                for call in list(self.calls):
                    sent = bool(self._send_due(call, now)) or sent
                await asyncio.sleep(0 if sent else self.TICK_S)

    def _send_due(self, call: PacedCall, now: float) -> bool | None:
        """Send what is due: True if anything was sent, False if not, None once the call is finished."""
        n = call.source.n
        if self.realtime:
            due_n = min(n, max(call.sent + 1, int((now - call.due0) / call.tick_s) + 1))
        elif call.sock.write_backlog() < 256 * 1024:
            due_n = min(n, call.sent + 50)
        else:
            due_n = call.sent
        sent = False
        if due_n > call.sent:
            data, messages = call.source.take(call.key, call.sent, due_n)
            if self.realtime:
                per_tick = max(1, messages // (due_n - call.sent))
                for i in range(call.sent, due_n):
                    self.result.record_lateness(now - (call.due0 + i * call.tick_s), per_tick)
            if not call.sock.send_raw(data):
                self.finish(call)
                return None
            self.result.frames_sent += messages
            call.sent = due_n
            sent = True
        if call.sent >= n:
            self.finish(call)
            return None
        return sent

    def finish(self, call: PacedCall) -> None:
        self.calls.discard(call)
        if call.done is not None and not call.done.done():
            call.done.set_result(None)


# one call ----------------------------------------------------------------------------------------
def verdict(sock: ForkSocket, sent: int, n: int) -> str | None:
    """Why the call failed, or None."""
    if sock.close_rcvd is not None and sock.close_rcvd[0] != 1000:
        return f"closed by the daemon: {sock.close_rcvd[0]} {sock.close_rcvd[1]}"
    if sent < n:
        return f"connection lost after {sent} of {n} ticks"
    return None


def failure_text(exc: BaseException) -> str:
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        return f"upgrade refused: HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"


async def run_calls(one_call: Callable[[int, LoadResult, ForkPacer], Any], *, calls: int, realtime: bool,
                    ramp_s: float, timeout_s: float) -> LoadResult:
    """Run `calls` calls (call k starts at k·ramp_s/calls), bounded by `timeout_s` in all."""
    result = LoadResult(calls=calls)
    pacer = ForkPacer(result, realtime=realtime)
    started = time.monotonic()

    async def delayed(k: int) -> None:
        if ramp_s > 0:
            await asyncio.sleep(k * ramp_s / calls)
        await one_call(k, result, pacer)

    tasks = [asyncio.create_task(delayed(k), name=f"loadgen-fork-call-{k}") for k in range(calls)]
    try:
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pacer.aclose()
    if pending:
        result.errors.append(f"{len(pending)} calls did not finish within {timeout_s:.0f} s")
    result.elapsed_s = time.monotonic() - started
    return result


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

    async def one_call(k: int, result: LoadResult, pacer: ForkPacer) -> None:
        key = str(uuid.uuid4())
        result.call_sids.append(dialect.call_id(key))
        sock: ForkSocket | None = None
        try:
            hs = dialect.handshake(key)
            async with asyncio.timeout(10):
                sock = await connect(target, {**hs.headers, **(extra_headers or {})}, hs.subprotocols)
            sock.send(dialect.opening(key))
            call = PacedCall(sock, template, key.encode(), dialect.tick_s, asyncio.get_running_loop().time())
            pacer.add(call)
            assert call.done is not None
            await asyncio.wait([call.done, sock.closed], return_when=asyncio.FIRST_COMPLETED)
            pacer.finish(call)
            if call.sent >= template.n:
                sock.send(dialect.closing(key))
            await finish_socket(sock, close_timeout_s)
            why = verdict(sock, call.sent, template.n)
            if why is None:
                result.calls_ok += 1
            else:
                result.errors.append(f"{dialect.call_id(key)}: {why}")
        except CALL_FAILURES as exc:
            result.errors.append(f"{dialect.call_id(key)}: {failure_text(exc)}")
        finally:
            if sock is not None and not sock.closed.done():
                sock.abort()

    return await run_calls(one_call, calls=calls, realtime=realtime, ramp_s=ramp_s, timeout_s=timeout_s)


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

    async def one_call(k: int, result: LoadResult, pacer: ForkPacer) -> None:
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
                call = PacedCall(sock, AudioHookTicks(client, framed), b"", 0.02,
                                 asyncio.get_running_loop().time())
                pacer.add(call)
                assert call.done is not None
                await asyncio.wait([call.done, sock.closed], return_when=asyncio.FIRST_COMPLETED)
                pacer.finish(call)
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
            if why is None:
                result.calls_ok += 1
            else:
                result.errors.append(f"{name}: {why}")
        except CALL_FAILURES as exc:
            result.errors.append(f"{name}: {failure_text(exc)}")
        finally:
            if sock is not None and not sock.closed.done():
                sock.abort()

    return await run_calls(one_call, calls=calls, realtime=realtime, ramp_s=ramp_s, timeout_s=timeout_s)
