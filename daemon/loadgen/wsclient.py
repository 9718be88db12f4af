"""Cheap websocket load: websockets' sans-I/O client protocol over plain asyncio transports, media
frames prepared once per clip position, and one pacer that sends every call's frames on its own
real-time schedule (`daemon.loadgen.pacing`).

No task and no await per message, one timer for all calls, and no JSON, base64 or websocket framing
per message (a task and a timer per call made the generator 40–114 ms late at 300 calls; framing
every message and scanning every call every 2 ms saturated its core at 600 calls).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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

    def record_call(self, name: str, why: str | None) -> None:
        """A finished call: completed when `why` is None, else an error naming the call."""
        if why is None:
            self.calls_ok += 1
        else:
            self.errors.append(f"{name}: {why}")

    async def await_calls(self, tasks: Sequence[asyncio.Task[None]], timeout_s: float) -> None:
        """Wait for every call task, `timeout_s` at most in all; what is left is cancelled (and awaited)
        and counted in `errors`."""
        pending: set[asyncio.Task[None]] = set()
        try:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if pending:
            self.errors.append(f"{len(pending)} calls did not finish within {timeout_s:.0f} s")

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


def wire(frame: str | bytes, *, ws: bool) -> bytes:
    """One frame as written to the socket (websocket client frame with the zero mask, or raw bytes)."""
    if isinstance(frame, str):
        return client_frame(frame.encode(), 0x1) if ws else frame.encode()
    return client_frame(frame, 0x2) if ws else frame


class CallSocket(asyncio.Protocol):
    """One call's socket: websockets' sans-I/O `ClientProtocol` over a plain asyncio transport,
    offering `subprotocols` (the upgrade fails when the server selects none of them), or with
    `url=None` a raw TCP connection (AudioSocket). Server text frames go to `on_text`.

    No task and no await per message: the shared pacer hands ready frames to `send_raw()`, which
    writes them at once. This keeps the generator cheap enough to drive hundreds of calls from one
    process next to the daemon it measures."""

    def __init__(self, url: str | None, headers: dict[str, str] | None = None, subprotocols: tuple[str, ...] = (),
                 on_text: Callable[[str], None] | None = None) -> None:
        from websockets.client import ClientProtocol
        from websockets.typing import Subprotocol
        from websockets.uri import parse_uri

        self.ws = None if url is None else ClientProtocol(
            parse_uri(url), subprotocols=[Subprotocol(s) for s in subprotocols] or None, max_size=2**20)
        self.headers = dict(headers or {})  # added to the upgrade request (e.g. X-Twilio-Signature)
        self.offered, self.on_text = subprotocols, on_text
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_rcvd: tuple[int, str] | None = None
        self.subprotocol: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.ws is None:
            self.opened.set_result(None)
            return
        request = self.ws.connect()
        for name, value in self.headers.items():
            request.headers[name] = value
        self.ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.receive_data(data)
            self._events()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws.receive_eof()
            self._events()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("connection closed during the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _events(self) -> None:
        from websockets.frames import Frame as WsFrame
        from websockets.frames import Opcode
        from websockets.http11 import Response

        assert self.ws is not None
        for event in self.ws.events_received():
            if isinstance(event, Response) and not self.opened.done():
                self.subprotocol = self.ws.subprotocol
                if self.ws.handshake_exc is not None:
                    self.opened.set_exception(self.ws.handshake_exc)
                elif self.offered and self.subprotocol is None:
                    self.opened.set_exception(ValueError(f"the server selected none of the subprotocols "
                                                         f"{list(self.offered)} (libwebsockets peers hang up)"))
                    self.abort()
                else:
                    self.opened.set_result(None)
            elif isinstance(event, WsFrame) and event.opcode is Opcode.TEXT and self.on_text is not None:
                self.on_text(bytes(event.data).decode("utf-8", "replace"))
            elif isinstance(event, WsFrame) and event.opcode is Opcode.CLOSE and self.ws.close_rcvd is not None:
                self.close_rcvd = (int(self.ws.close_rcvd.code), self.ws.close_rcvd.reason)
        self._flush()

    def _flush(self) -> None:
        if self.ws is None or self.transport is None or self.transport.is_closing():
            return
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self.ws.close_expected() and self.ws.handshake_exc is not None:
            self.transport.close()

    def _open(self) -> bool:
        from websockets.protocol import State

        if self.transport is None or self.transport.is_closing():
            return False
        return self.ws is None or self.ws.state is State.OPEN

    def send_raw(self, data: bytes) -> bool:
        """Write ready frames (see `client_frame`); False once the socket cannot carry them."""
        if not self._open():
            return False
        assert self.transport is not None
        self.transport.write(data)
        return True

    def send(self, frames: Sequence[str | bytes]) -> bool:
        """Write text (str) and binary (bytes) messages; False once the socket cannot carry them."""
        return self.send_raw(b"".join(wire(f, ws=self.ws is not None) for f in frames))

    def write_backlog(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def close(self) -> None:
        """Websocket: a normal close (1000) handshake; TCP: half-close, the server closes its side."""
        from websockets.frames import CloseCode
        from websockets.protocol import State

        if self.ws is None:
            if self.transport is not None and not self.transport.is_closing() and self.transport.can_write_eof():
                self.transport.write_eof()
        elif self.ws.state is State.OPEN:
            self.ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


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

    def take(self, sid: bytes, first: int, end: int) -> tuple[bytes, int]:
        """`tick_bytes` and how many media messages they hold (a `pacing.TickSource`)."""
        return self.tick_bytes(sid, first, end), (end - first) * self.per_tick
