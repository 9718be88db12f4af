"""A websockets server connection that can hand each complete message to a plain callback.

websockets' own `recv()` queues every message and wakes the handler task for each one: at 50 media
messages per second per call that wake-up (a future, a task step, the assembler's bookkeeping) cost
more than parsing the message. A route that handles messages synchronously (the Twilio media route)
asks the listener for `sync_messages`; its connection then hands each complete data message, as the
protocol parses it, to `set_message_sink`'s callback, inside `data_received`. Control frames, the
close handshake, `max_size` and UTF-8-agnostic framing stay websockets' (TEXT payloads are passed as
the raw bytes: the route's JSON decoder validates them). Messages that arrive between the handshake
and the handler setting its sink are held, at most `EARLY_MESSAGES_MAX`, and handed over first.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Event, State
from websockets.speedups import apply_mask

#: (is_text, payload) of one complete data message
MessageSink = Callable[[bool, bytes], None]

#: messages held before the handler sets its sink (a peer pipelining its first messages behind the
#: upgrade request); past this the connection is closed with 1008 rather than buffering without bound
EARLY_MESSAGES_MAX = 64


class MediaConnection(ServerConnection):
    """`ServerConnection` plus an opt-in synchronous message path (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: set by the listener during the handshake when the route handles messages synchronously
        self.sync_messages = False
        self._sink: MessageSink | None = None
        self._early: list[tuple[bool, bytes]] = []
        self._fragments: list[bytes] | None = None
        self._fragments_text = False
        self._unparsed = bytearray()  # the fast path's partial frame
        self._fast_off = False  # websockets parses everything from then on (closing, or an odd frame)

    def set_message_sink(self, sink: MessageSink) -> None:
        """Hand every held and future data message to `sink`, which must not raise (its exceptions
        would surface in the event loop's protocol callback)."""
        self._sink = sink
        early, self._early = self._early, []
        for is_text, data in early:
            sink(is_text, data)

    def drop_messages(self) -> None:
        """Teardown: ignore data messages from now on (and let go of the sink and what it holds)."""
        self._sink = _ignore
        self._early = []

    def data_received(self, data: bytes) -> None:
        """Data frames of an open sync-message connection are cut here (header, unmask with
        websockets' C `apply_mask`, hand over), the per-frame work websockets' generator parser does
        in Python; control frames, and everything once closing or after a frame this path does not
        take (RSV bits, unmasked), are fed to websockets at a frame boundary."""
        if (self._fast_off or not self.sync_messages or self.protocol.state is not State.OPEN
                or self.protocol.reader.buffer):  # websockets is mid-frame (frames pipelined with the upgrade)
            if self._unparsed:
                data, self._unparsed = bytes(self._unparsed) + data, bytearray()
            super().data_received(data)
            return
        buf = self._unparsed
        buf += data
        pos, end = 0, len(buf)
        max_size = self.protocol.max_message_size
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, head = b1 & 0x7F, pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = struct.unpack_from("!H", buf, head)
                head += 2
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = struct.unpack_from("!Q", buf, head)
                head += 8
            opcode = b0 & 0x0F
            if b0 & 0x70 or not b1 & 0x80 or opcode >= 8:  # extension bits, unmasked, or a control frame
                if b0 & 0x70 or not b1 & 0x80:
                    self._fast_off = True
                if end - head < 4 + length and not self._fast_off:
                    break  # a control frame is handed over whole
                rest = bytes(buf[pos:]) if self._fast_off else bytes(buf[pos:head + 4 + length])
                del buf[:pos + len(rest)]
                super().data_received(rest)
                if self._fast_off or self.protocol.state is not State.OPEN:
                    self._fast_off = True
                    if buf:
                        rest, self._unparsed = bytes(buf), bytearray()
                        super().data_received(rest)
                    return
                pos, end = 0, len(buf)
                continue
            held = sum(map(len, self._fragments)) if self._fragments is not None and opcode == 0 else 0
            if max_size is not None and held + length > max_size:
                self._fail(CloseCode.MESSAGE_TOO_BIG, f"over size limit ({held + length} > {max_size} bytes)")
                return
            if end - head < 4 + length:
                break
            payload = apply_mask(memoryview(buf)[head + 4:head + 4 + length], bytes(buf[head:head + 4]))
            pos = head + 4 + length
            if not self._data_frame(opcode, bool(b0 & 0x80), payload):
                return
        if pos:
            del buf[:pos]

    def _data_frame(self, opcode: int, fin: bool, payload: bytes) -> bool:
        """One data frame from the fast path; False when it failed the connection."""
        if opcode == 0:
            fragments = self._fragments
            if fragments is None:
                self._fail(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
                return False
            fragments.append(payload)
            if fin:
                self._fragments = None
                self._deliver(self._fragments_text, b"".join(fragments))
            return True
        if opcode not in (1, 2) or self._fragments is not None:
            self._fail(CloseCode.PROTOCOL_ERROR, f"unexpected opcode {opcode}")
            return False
        if fin:
            self._deliver(opcode == 1, payload)
        else:
            self._fragments, self._fragments_text = [payload], opcode == 1
        return True

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection the way websockets' parser would (close frame, then the TCP close)."""
        self._fast_off = True
        self._unparsed = bytearray()
        self.protocol.fail(code, reason)
        self.send_data()

    def process_event(self, event: Event) -> None:
        if not self.sync_messages or self.request is None or not isinstance(event, Frame):
            super().process_event(event)
            return
        opcode = event.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if event.fin:
                self._deliver(opcode is Opcode.TEXT, bytes(event.data))
            else:  # a fragmented message: websockets bounds its total size by max_size
                self._fragments = [bytes(event.data)]
                self._fragments_text = opcode is Opcode.TEXT
        elif opcode is Opcode.CONT:
            fragments = self._fragments
            if fragments is not None:  # a stray continuation is a protocol error websockets already failed
                fragments.append(bytes(event.data))
                if event.fin:
                    self._fragments = None
                    self._deliver(self._fragments_text, b"".join(fragments))
        else:
            super().process_event(event)  # ping, pong, close: websockets' own handling

    def _deliver(self, is_text: bool, data: bytes) -> None:
        sink = self._sink
        if sink is not None:
            sink(is_text, data)
        elif len(self._early) < EARLY_MESSAGES_MAX:
            self._early.append((is_text, data))
        else:
            self._fail(CloseCode.POLICY_VIOLATION, "too many messages before the stream was ready")


def _ignore(is_text: bool, data: bytes) -> None:
    pass


__all__ = ["EARLY_MESSAGES_MAX", "MediaConnection", "MessageSink"]
