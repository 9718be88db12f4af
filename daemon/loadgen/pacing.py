"""One pacer for every websocket loadgen (Twilio, the media forks): each call's ticks go out on its own
absolute schedule from one task, with lateness measured per message; `run_calls` runs a batch of
calls sharing it, bounded in time; `verdict` / `failure_text` say why a call failed.

No task and no await per message, one timer for all calls (a task and a timer per call made the
generator 40–114 ms late at 300 calls; scanning every call every 2 ms saturated its core at 600)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from daemon.loadgen.wsclient import FRAME_S, LoadResult


class TickSource(Protocol):
    """A call's messages per tick, prepared once: `take` returns the ready bytes of ticks first..end-1
    for the call `key` (patched into them) and how many messages they hold."""

    n: int

    def take(self, key: bytes, first: int, end: int) -> tuple[bytes, int]: ...


class PacedSocket(Protocol):
    def send_raw(self, data: bytes) -> bool: ...

    def write_backlog(self) -> int: ...


@dataclass(eq=False)
class PacedCall:
    sock: PacedSocket
    source: TickSource
    key: bytes  # this call's key (e.g. streamSid), patched into the prepared frames
    due0: float  # when tick 0 is due (loop time)
    tick_s: float = FRAME_S
    stop: bytes = b""  # ready frames written after the last tick (Twilio's `stop`)
    sent: int = 0  # ticks sent
    done: asyncio.Future[None] | None = None


class Pacer:
    """Sends every call's ticks on its own absolute schedule (tick i at due0 + i·tick_s) from one task:
    calls keep their own phase (they started at different moments), and a late wake-up never
    accumulates into drift. In real time the calls wait in a heap ordered by when their next tick is
    due, so a wake-up touches only the calls that are due (50 per call and second), not every call.
    Lateness is measured per message. In fast mode, each call goes as fast as its socket drains."""

    TICK_S = 0.002  # longest sleep: new calls are picked up within it

    def __init__(self, result: LoadResult, *, realtime: bool, name: str = "loadgen-pacer") -> None:
        self.result = result
        self.realtime = realtime
        self.name = name
        self.calls: set[PacedCall] = set()
        self._heap: list[tuple[float, int, PacedCall]] = []
        self._order = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def add(self, call: PacedCall) -> None:
        call.done = asyncio.get_running_loop().create_future()
        self.calls.add(call)
        heapq.heappush(self._heap, (call.due0, next(self._order), call))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def play(self, call: PacedCall, closed: asyncio.Future[None]) -> None:
        """Add `call` and wait until its last tick is sent or its socket is `closed`."""
        self.add(call)
        assert call.done is not None
        await asyncio.wait([call.done, closed], return_when=asyncio.FIRST_COMPLETED)
        self.finish(call)

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
                # fast mode goes on at once while sockets take data; when all are backed up, it waits a tick
                await asyncio.sleep(0 if sent else self.TICK_S)

    def _send_due(self, call: PacedCall, now: float) -> bool | None:
        """Send what is due of one call: True if anything was sent, False if not, None once finished."""
        result = self.result
        n = call.source.n
        if self.realtime:  # called when tick `sent` is due: send it and any others due by now
            due_n = min(n, max(call.sent + 1, int((now - call.due0) / call.tick_s) + 1))
        elif call.sock.write_backlog() < 256 * 1024:
            due_n = min(n, call.sent + 50)  # as fast as the socket drains
        else:
            due_n = call.sent
        sent = False
        if due_n > call.sent:
            data, messages = call.source.take(call.key, call.sent, due_n)
            if self.realtime:
                per_tick = max(1, messages // (due_n - call.sent))
                for i in range(call.sent, due_n):
                    result.record_lateness(now - (call.due0 + i * call.tick_s), per_tick)
            if not call.sock.send_raw(data):
                self.finish(call)
                return None
            result.frames_sent += messages
            call.sent = due_n
            sent = True
        if call.sent >= n:
            if call.stop:
                call.sock.send_raw(call.stop)
            self.finish(call)
            return None
        return sent

    def finish(self, call: PacedCall) -> None:
        self.calls.discard(call)
        if call.done is not None and not call.done.done():
            call.done.set_result(None)


async def run_calls(one_call: Callable[[int, LoadResult, Pacer], Awaitable[None]], *, calls: int, realtime: bool,
                    ramp_s: float, timeout_s: float, name: str = "loadgen") -> LoadResult:
    """Run `calls` calls sharing one `Pacer` (call k starts at k·ramp_s/calls), bounded by `timeout_s`
    in all; tasks are named `<name>-call-<k>`, the pacer `<name>-pacer`."""
    result = LoadResult(calls=calls)
    pacer = Pacer(result, realtime=realtime, name=f"{name}-pacer")
    started = time.monotonic()

    async def delayed(k: int) -> None:
        if ramp_s > 0:
            await asyncio.sleep(k * ramp_s / calls)
        await one_call(k, result, pacer)

    tasks = [asyncio.create_task(delayed(k), name=f"{name}-call-{k}") for k in range(calls)]
    try:
        await result.await_calls(tasks, timeout_s)
    finally:
        await pacer.aclose()
    result.elapsed_s = time.monotonic() - started
    return result


class ClosingSocket(Protocol):
    close_rcvd: tuple[int, str] | None


def verdict(sock: ClosingSocket, sent: int, n: int, unit: str = "ticks") -> str | None:
    """Why a played call failed (the daemon closed with a code other than 1000, or the connection
    dropped before the last of `n` ticks), or None."""
    if sock.close_rcvd is not None and sock.close_rcvd[0] != 1000:
        return f"closed by the daemon: {sock.close_rcvd[0]} {sock.close_rcvd[1]}"
    if sent < n:
        return f"connection lost after {sent} of {n} {unit}"
    return None


def failure_text(exc: BaseException) -> str:
    """A call's exception as one line (a refused upgrade names its HTTP status)."""
    from websockets.exceptions import InvalidStatus

    if isinstance(exc, InvalidStatus):
        return f"upgrade refused: HTTP {exc.response.status_code}"
    return f"{type(exc).__name__}: {exc}"
