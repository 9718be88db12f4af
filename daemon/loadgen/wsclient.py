"""Cheap websocket load: websockets' sans-I/O client protocol over plain asyncio transports, media
frames prepared once per clip position, and one pacer that sends every call's frames on its own
real-time schedule.

No task and no await per message, one timer for all calls, and no JSON, base64 or websocket framing
per message (a task and a timer per call made the generator 40–114 ms late at 300 calls; framing
every message and scanning every call every 2 ms saturated its core at 600 calls).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

FRAME_MS = 20
#: a frame sent more than one frame period after it was due counts as late
LATE_AFTER_S = FRAME_MS / 1000
FRAME_S = FRAME_MS / 1000
#: lateness histogram: 1 ms bins up to this many ms, the last bin holds everything later
LATENESS_BINS = 2000


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
    lateness_ms: list[int] = field(default_factory=lambda: [0] * LATENESS_BINS)  # messages per 1 ms bin

    def record_lateness(self, late_s: float, messages: int) -> None:
        if late_s > LATE_AFTER_S:
            self.late_frames += messages
        if late_s > self.max_lateness_s:
            self.max_lateness_s = late_s
        self.lateness_ms[min(LATENESS_BINS - 1, max(0, int(late_s * 1000)))] += messages

    def lateness_quantile_ms(self, q: float) -> float:
        """Upper edge of the 1 ms bin holding quantile q of the messages' lateness (0 without any)."""
        total = sum(self.lateness_ms)
        if not total:
            return 0.0
        acc = 0
        for i, c in enumerate(self.lateness_ms):
            acc += c
            if acc >= q * total:
                return float(i + 1)
        return float(LATENESS_BINS)

    def summary(self) -> str:
        lines = [
            f"calls: {self.calls_ok}/{self.calls} completed in {self.elapsed_s:.1f} s",
            f"frames sent: {self.frames_sent}",
            f"late frames (> {LATE_AFTER_S * 1000:.0f} ms after due): {self.late_frames}, "
            f"max lateness {self.max_lateness_s * 1000:.1f} ms, "
            f"p99 lateness ≤ {self.lateness_quantile_ms(0.99):.0f} ms",
        ]
        lines += [f"error: {e}" for e in self.errors[:20]]
        return "\n".join(lines)


class CallSocket(asyncio.Protocol):
    """One call's websocket: websockets' sans-I/O `ClientProtocol` over a plain asyncio transport.

    No task and no await per message: the shared `Pacer` hands frames to `send()`, which frames,
    masks and writes them at once. This keeps the generator cheap enough to drive hundreds of calls
    from one process next to the daemon it measures."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self.ws = ClientProtocol(parse_uri(url), max_size=2**20)
        self.headers = dict(headers or {})  # added to the upgrade request (e.g. X-Twilio-Signature)
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_rcvd: tuple[int, str] | None = None

    # asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        request = self.ws.connect()
        for name, value in self.headers.items():
            request.headers[name] = value
        self.ws.send_request(request)
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

    def send_raw(self, data: bytes) -> bool:
        """Write ready websocket frames (see `client_frame`); False once the socket cannot carry them."""
        from websockets.protocol import State

        if self.transport is None or self.transport.is_closing() or self.ws.state is not State.OPEN:
            return False
        self.transport.write(data)
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


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One whole client→server websocket frame (FIN set), masked with the all-zero key.

    RFC 6455 requires client frames to be masked but lets the client pick any key; with the zero key
    the masked payload is the payload itself, so a frame can be built once and written to every
    socket as is (no per-message framing or masking in Python)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


class MediaFrames:
    """Every media message of a Twilio stream, prepared once per clip position for all calls.

    Apart from `streamSid`, a media message depends only on its position in the clip: `sequenceNumber`
    (message count since `start`), `chunk`, `timestamp` and the payload are the same for every call
    playing the clip from its start. So each tick's messages are kept as ready websocket frames split
    around the streamSid, and a call's tick is `sid.join(parts)`: one C-level join per call and tick.
    `ticks[i]` holds one message per track, in the order given (Twilio interleaves tracks that way)."""

    def __init__(self, tracks: dict[str, list[bytes]], *, sid_len: int, first_seq: int = 2) -> None:
        import base64
        import json

        names = list(tracks)
        self.n = max((len(f) for f in tracks.values()), default=0)
        self.per_tick = len(names)
        self.sid_len = sid_len
        hole = "@" * sid_len  # never in JSON of digits, track names or base64
        seq = first_seq
        self.ticks: list[list[bytes]] = []
        for i in range(self.n):
            parts: list[bytes] = [b""]
            for t in names:
                frame = tracks[t][i] if i < len(tracks[t]) else b"\xff" * 160  # μ-law silence past the end
                text = json.dumps({"event": "media", "sequenceNumber": str(seq), "streamSid": hole, "media": {
                    "track": t, "chunk": str(i + 1), "timestamp": str(i * FRAME_MS),
                    "payload": base64.b64encode(frame).decode("ascii")}}, separators=(",", ":"))
                seq += 1
                before, after = client_frame(text.encode()).split(hole.encode())
                parts[-1] += before
                parts.append(after)
            self.ticks.append(parts)
        self.next_seq = seq  # the sequenceNumber of the message after the last media message

    def tick_bytes(self, sid: bytes, first: int, end: int) -> bytes:
        """The frames of ticks first..end-1 for the stream `sid` (`sid_len` ASCII bytes)."""
        if end - first == 1:
            return sid.join(self.ticks[first])
        return b"".join(sid.join(self.ticks[i]) for i in range(first, end))


@dataclass(eq=False)
class PacedCall:
    sock: CallSocket
    frames: MediaFrames
    sid: bytes  # this stream's streamSid, patched into the prepared frames
    stop: str
    due0: float  # when tick 0 is due (loop time)
    sent: int = 0  # ticks sent
    done: asyncio.Future[None] | None = None

    def __post_init__(self) -> None:
        if len(self.sid) != self.frames.sid_len:
            raise ValueError(f"streamSid must be {self.frames.sid_len} bytes, got {len(self.sid)}")


class Pacer:
    """Sends every call's ticks on its own absolute schedule (tick i at due0 + i·20 ms) from one task:
    calls keep their own phase (they started at different moments), and a late wake-up never
    accumulates into drift. In real time the calls wait in a heap ordered by when their next tick is
    due, so a wake-up touches only the calls that are due (50 per call and second), not every call.
    Lateness is measured per message."""

    TICK_S = 0.002  # longest sleep: new calls are picked up within it

    def __init__(self, result: LoadResult, *, realtime: bool) -> None:
        self.result = result
        self.realtime = realtime
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
            self._task = asyncio.get_running_loop().create_task(self._run(), name="loadgen-pacer")

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
                        heapq.heappush(heap, (call.due0 + call.sent * FRAME_S, next(self._order), call))
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
        n = call.frames.n
        if self.realtime:  # called when tick `sent` is due: send it and any others due by now
            due_n = min(n, max(call.sent + 1, int((now - call.due0) / FRAME_S) + 1))
        elif call.sock.write_backlog() < 256 * 1024:
            due_n = min(n, call.sent + 50)  # as fast as the socket drains
        else:
            due_n = call.sent
        sent = False
        if due_n > call.sent:
            if self.realtime:
                for i in range(call.sent, due_n):
                    result.record_lateness(now - (call.due0 + i * FRAME_S), call.frames.per_tick)
            if not call.sock.send_raw(call.frames.tick_bytes(call.sid, call.sent, due_n)):
                self.finish(call)
                return None
            result.frames_sent += (due_n - call.sent) * call.frames.per_tick
            call.sent = due_n
            sent = True
        if call.sent >= n:
            call.sock.send([call.stop])
            self.finish(call)
            return None
        return sent

    def finish(self, call: PacedCall) -> None:
        self.calls.discard(call)
        assert call.done is not None
        if not call.done.done():
            call.done.set_result(None)
