"""The sync-message connection's own framing (daemon/ingest/websocket/connection.py) against crafted
frames on a raw TCP socket: split and coalesced writes, fragments with a ping between them, the size
limit, and the protocol errors websockets' parser would raise. The Twilio route is the one that uses it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.uri import parse_uri

from tests.integration.test_twilio_server import WAIT, Env, frames, twilio_envs


@pytest.fixture
async def env_factory() -> AsyncIterator[Callable[..., Awaitable[Env]]]:
    """Standalone Twilio routes (the sync-message connection) with a recording admission."""
    async with twilio_envs() as make:
        yield make


@pytest.fixture
async def env(env_factory: Callable[..., Awaitable[Env]]) -> Env:
    return await env_factory()


class RawPeer:
    """A websocket client whose frames are written byte for byte as the test says."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, proto: ClientProtocol) -> None:
        self.reader, self.writer, self.proto = reader, writer, proto

    @classmethod
    async def connect(cls, url: str) -> RawPeer:
        proto = ClientProtocol(parse_uri(url))
        host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        proto.send_request(proto.connect())
        writer.write(b"".join(proto.data_to_send()))
        peer = cls(reader, writer, proto)
        async with asyncio.timeout(WAIT):
            while not proto.events_received() and proto.handshake_exc is None:
                proto.receive_data(await reader.read(65536))
        assert proto.handshake_exc is None
        return peer

    async def send(self, data: bytes, *, step: int = 0) -> None:
        """Write `data` at once, or `step` bytes per write (draining between writes)."""
        step = step or len(data)
        for i in range(0, len(data), step):
            self.writer.write(data[i:i + step])
            await self.writer.drain()

    async def next_frame(self) -> Frame | None:
        """The next frame the server sends; None when the connection ends first."""
        async with asyncio.timeout(WAIT):
            while True:
                for event in self.proto.events_received():
                    if isinstance(event, Frame):
                        return event
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.proto.receive_data(data)

    async def close_code(self) -> int | None:
        """Frames until the server's close frame; its code. Then the TCP close, as a client does."""
        code = None
        while (frame := await self.next_frame()) is not None:
            if frame.opcode is Opcode.CLOSE:
                code = Close.parse(frame.data).code
                break
        await self.aclose()
        return code

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def framed(opcode: Opcode, data: bytes, fin: bool = True, mask: bool = True) -> bytes:
    return Frame(opcode, data, fin).serialize(mask=mask, extensions=[])


def start_message(call_sid: str) -> bytes:
    return json.dumps({"event": "start", "streamSid": "MZ1", "start": {
        "streamSid": "MZ1", "accountSid": "AC1", "callSid": call_sid, "tracks": ["inbound"],
        "customParameters": {},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}).encode()


def media_message(n: int, payload: bytes) -> bytes:
    return json.dumps({"event": "media", "streamSid": "MZ1", "media": {
        "track": "inbound", "chunk": str(n), "timestamp": str((n - 1) * 20),
        "payload": base64.b64encode(payload).decode()}}).encode()


async def test_split_coalesced_and_fragmented_frames_arrive_whole_and_in_order(env: Env) -> None:
    peer = await RawPeer.connect(env.url)
    payloads = frames(7, 6)
    await peer.send(framed(Opcode.TEXT, start_message("CAfast")), step=1)  # one byte per write
    # two media messages coalesced in one write
    await peer.send(framed(Opcode.TEXT, media_message(1, payloads[0]))
                    + framed(Opcode.TEXT, media_message(2, payloads[1])))
    # a message in three fragments with a ping between them: the ping is answered, the message kept whole
    third = media_message(3, payloads[2])
    await peer.send(framed(Opcode.TEXT, third[:50], fin=False) + framed(Opcode.PING, b"hello")
                    + framed(Opcode.CONT, third[50:100], fin=False))
    pong = await peer.next_frame()
    assert pong is not None and pong.opcode is Opcode.PONG and pong.data == b"hello"
    await peer.send(framed(Opcode.CONT, third[100:]), step=7)
    # a 64-bit length header (legal for any size) and a 16-bit one split inside the header
    big = framed(Opcode.TEXT, media_message(4, payloads[3]))
    await peer.send(big[:1])
    await peer.send(big[1:3])
    await peer.send(big[3:] + framed(Opcode.TEXT, media_message(5, payloads[4])))
    call = await env.admission.wait_call("CAfast")
    sink = await call.leg("inbound")
    await sink.wait_payloads(5)
    assert sink.payloads == payloads[:5]
    await peer.send(framed(Opcode.CLOSE, Close(1000, "bye").serialize()))
    assert await peer.close_code() == 1000
    async with asyncio.timeout(WAIT):
        await call.ended.wait()
    assert call.end_reason == "disconnected"


async def _after_start(env: Env, call_sid: str) -> RawPeer:
    peer = await RawPeer.connect(env.url)
    await peer.send(framed(Opcode.TEXT, start_message(call_sid)))
    await env.admission.wait_call(call_sid)
    return peer


async def test_oversize_frame_closes_1009(env_factory: Callable[..., Awaitable[Env]]) -> None:
    env = await env_factory(max_frame_bytes=4096)
    peer = await _after_start(env, "CAbig")
    header_only = framed(Opcode.TEXT, b"x" * 70000)[:14]  # the size limit is checked from the header alone
    await peer.send(header_only)
    assert await peer.close_code() == 1009
    async with asyncio.timeout(WAIT):
        await env.admission.calls["CAbig"].ended.wait()
    assert env.drops("oversize") == 1


async def test_protocol_errors_close_1002(env: Env) -> None:
    cases = {
        "CAcont": framed(Opcode.CONT, b"stray"),  # a continuation with no message begun
        "CAinterleave": framed(Opcode.TEXT, b'{"event"', fin=False) + framed(Opcode.TEXT, b"{}"),
        "CAunmasked": framed(Opcode.TEXT, media_message(1, bytes(160)), mask=False),  # websockets' own check
    }
    for call_sid, bad in cases.items():
        peer = await _after_start(env, call_sid)
        await peer.send(bad)
        assert await peer.close_code() == 1002, call_sid
    # a well-behaved call next to them is unharmed; a text frame that is not UTF-8 is a counted drop
    peer = await _after_start(env, "CAgood")
    await peer.send(framed(Opcode.TEXT, b'{"event": "\xff"}'))
    await peer.send(framed(Opcode.TEXT, media_message(1, frames(3, 1)[0])))
    sink = await env.admission.calls["CAgood"].leg("inbound")
    await sink.wait_payloads(1)
    assert env.drops("invalid_json") == 1 and not env.admission.calls["CAgood"].ended.is_set()
    await peer.aclose()
