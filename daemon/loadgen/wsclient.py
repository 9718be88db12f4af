"""Cheap websocket load: websockets' sans-I/O client protocol over plain asyncio transports, and one
pacer that sends every call's frames on its own real-time schedule.

No task and no await per message, and one timer for all calls: hundreds of calls cost little CPU
next to the daemon being measured (a task and a timer per call made the generator itself 40–114 ms
late at 300 calls).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

FRAME_MS = 20
#: a frame sent more than one frame period after it was due counts as late
LATE_AFTER_S = FRAME_MS / 1000


@dataclass
class LoadResult:
    calls: int = 0
    calls_ok: int = 0
    frames_sent: int = 0  # media messages, over all tracks and calls
    late_frames: int = 0
    max_lateness_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    call_sids: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    def summary(self) -> str:
        lines = [
            f"calls: {self.calls_ok}/{self.calls} completed in {self.elapsed_s:.1f} s",
            f"frames sent: {self.frames_sent}",
            f"late frames (> {LATE_AFTER_S * 1000:.0f} ms after due): {self.late_frames}, "
            f"max lateness {self.max_lateness_s * 1000:.1f} ms",
        ]
        lines += [f"error: {e}" for e in self.errors[:20]]
        return "\n".join(lines)


class CallSocket(asyncio.Protocol):
    """One call's websocket: websockets' sans-I/O `ClientProtocol` over a plain asyncio transport.

    No task and no await per message: the shared `Pacer` hands frames to `send()`, which frames,
    masks and writes them at once. This keeps the generator cheap enough to drive hundreds of calls
    from one process next to the daemon it measures."""

    def __init__(self, url: str) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.ws = ClientProtocol(parse_uri(url), max_size=2**20)
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_rcvd: tuple[int, str] | None = None

    # asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Opcode
        from websockets.http11 import Response

        self.ws.receive_data(data)
        self._events(Response, Opcode)

    def eof_received(self) -> bool | None:
        from websockets.frames import Opcode
        from websockets.http11 import Response

        self.ws.receive_eof()
        self._events(Response, Opcode)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("connection closed during the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    # -------------------------------------------------------------------------------------------
    def _events(self, response_type: type, opcode: Any) -> None:
        for event in self.ws.events_received():
            if isinstance(event, response_type) and not self.opened.done():
                exc = self.ws.handshake_exc
                if exc is None:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(exc)
            elif getattr(event, "opcode", None) is opcode.CLOSE and self.ws.close_rcvd is not None:
                self.close_rcvd = (int(self.ws.close_rcvd.code), self.ws.close_rcvd.reason)
        self._flush()

    def _flush(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()  # the protocol asks for a half-close
        if self.ws.close_expected() and self.ws.handshake_exc is not None:
            self.transport.close()

    def send(self, messages: list[str]) -> bool:
        """Queue text messages; False once the socket can no longer carry them."""
        from websockets.protocol import State

        if self.transport is None or self.transport.is_closing() or self.ws.state is not State.OPEN:
            return False
        for msg in messages:
            self.ws.send_text(msg.encode())
        self._flush()
        return True

    def write_backlog(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        from websockets.frames import CloseCode
        from websockets.protocol import State

        if self.ws.state is State.OPEN:
            self.ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


@dataclass(eq=False)
class PacedCall:
    sock: CallSocket
    ticks: list[list[str]]
    stop: str
    due0: float  # when frame 0 is due (loop time)
    sent: int = 0
    done: asyncio.Future[None] | None = None


class Pacer:
    """Sends every call's frames on its own absolute schedule (frame i at due0 + i·20 ms), from one
    timer for all calls: calls keep their own phase (they started at different moments), and a
    late wake-up never accumulates into drift. Lateness is measured per frame."""

    TICK_S = 0.002

    def __init__(self, result: LoadResult, *, realtime: bool) -> None:
        self.result = result
        self.realtime = realtime
        self.calls: list[PacedCall] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def add(self, call: PacedCall) -> None:
        call.done = asyncio.get_running_loop().create_future()
        self.calls.append(call)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loadgen-pacer")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.calls:
                self._wake.clear()
                await self._wake.wait()
            now = loop.time()
            sent = False
            for call in list(self.calls):
                sent = self._send_due(call, now) or sent
            # fast mode goes on at once while sockets take data; when all are backed up, it waits a tick
            await asyncio.sleep(0 if sent and not self.realtime else self.TICK_S)

    def _send_due(self, call: PacedCall, now: float) -> bool:
        """Send what is due of one call; True if anything was sent."""
        result = self.result
        if self.realtime:
            due_n = min(len(call.ticks), int((now - call.due0) / (FRAME_MS / 1000)) + 1)
        elif call.sock.write_backlog() < 256 * 1024:
            due_n = min(len(call.ticks), call.sent + 50)  # as fast as the socket drains
        else:
            due_n = call.sent
        if due_n > call.sent:
            batch = [msg for tick in call.ticks[call.sent:due_n] for msg in tick]
            if self.realtime:
                for i in range(call.sent, due_n):
                    late = now - (call.due0 + i * FRAME_MS / 1000)
                    if late > LATE_AFTER_S:
                        result.late_frames += len(call.ticks[i])
                    result.max_lateness_s = max(result.max_lateness_s, late)
            if not call.sock.send(batch):
                self.finish(call)
                return False
            result.frames_sent += len(batch)
            call.sent = due_n
            sent = True
        else:
            sent = False
        if call.sent >= len(call.ticks):
            call.sock.send([call.stop])
            self.finish(call)
            sent = True
        return sent

    def finish(self, call: PacedCall) -> None:
        self.calls.remove(call)
        assert call.done is not None
        if not call.done.done():
            call.done.set_result(None)
