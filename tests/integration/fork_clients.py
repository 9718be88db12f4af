"""Compact client-side encoders of every media-fork dialect, for tests over real sockets.

`plan(dialect, call_id, a, b)` gives what a platform would send for one call: the upgrade (path,
headers, subprotocols), the opening frames, one list of frames per 20 ms tick, the closing frames and
the names the server gives the legs. `a` and `b` are int16 mono PCM at 16 kHz (`b` None: one leg);
8 kHz dialects get them resampled. `play()` sends a plan over a websocket in real time (or as fast as
the socket takes it) and returns the close code. AudioSocket goes over TCP (`play_audiosocket`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soxr
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Subprotocol

from daemon.audio.codecs import encode_ulaw
from daemon.ingest.forks.audiosocket import frame as audiosocket_frame

Pcm = npt.NDArray[np.int16]
CLIPS = Path(__file__).resolve().parents[2] / "daemon" / "clips"
TELNYX_TOKEN = "telnyx-test-token"
EXOTEL_BASIC = "exokey:exotoken"
JAMBONZ_BASIC = "jb:secret"
AUDIOHOOK_KEY = "audiohook-test-api-key"
AUDIOHOOK_SECRET_B64 = base64.b64encode(b"audiohook test client secret").decode()
AUDIOHOOK_ORG = "d7934305-0972-4844-938e-9060eef73d05"
#: the daemon's env for the auth these clients use
FORK_SECRET = "in-band-fork-secret"
ENV = {"E2E_FORK_SECRET": FORK_SECRET, "E2E_TELNYX_TOKEN": TELNYX_TOKEN,
       "E2E_EXOTEL_BASIC": EXOTEL_BASIC, "E2E_JAMBONZ_BASIC": JAMBONZ_BASIC,
       "E2E_AUDIOHOOK_KEY": AUDIOHOOK_KEY, "E2E_AUDIOHOOK_SECRET": AUDIOHOOK_SECRET_B64}
#: the config sections enabling every dialect with that auth (ports: the caller's [ingest.websocket])
CONFIG = """
[ingest.telnyx]
enabled = true
auth_token_env = "E2E_TELNYX_TOKEN"
[ingest.plivo]
enabled = true
secret_header = "token"
secret_env = "E2E_FORK_SECRET"
[ingest.exotel]
enabled = true
basic_auth_env = "E2E_EXOTEL_BASIC"
[ingest.vonage]
enabled = true
secret_header = "token"
secret_env = "E2E_FORK_SECRET"
[ingest.freeswitch]
enabled = true
mix_type = "stereo"
sample_rate_hz = 16000
secret_key = "token"
secret_env = "E2E_FORK_SECRET"
[ingest.jambonz]
enabled = true
basic_auth_env = "E2E_JAMBONZ_BASIC"
[ingest.asterisk_ws]
enabled = true
secret_variable = "TOKEN"
secret_env = "E2E_FORK_SECRET"
[ingest.audiohook]
enabled = true
api_key_env = "E2E_AUDIOHOOK_KEY"
client_secret_env = "E2E_AUDIOHOOK_SECRET"
[ingest.audiosocket]
enabled = true
listen = "127.0.0.1:0"
"""
WS_DIALECTS = ("telnyx", "plivo", "exotel", "vonage", "freeswitch", "jambonz", "asterisk_ws", "audiohook")
Frame = str | bytes


def load_clip(name: str, rate: int = 16000) -> Pcm:
    with wave.open(str(CLIPS / f"speech_{name}_16k.wav"), "rb") as w:
        raw, src, ch = w.readframes(w.getnframes()), w.getframerate(), w.getnchannels()
    pcm = np.frombuffer(raw, dtype="<i2").reshape(-1, ch)[:, 0]
    if src != rate:
        pcm = soxr.resample(pcm, src, rate)
    return np.ascontiguousarray(pcm, dtype=np.int16)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _basic(cred: str) -> str:
    return "Basic " + _b64(cred.encode())


def _ticks(pcm: Pcm, n: int) -> list[Pcm]:
    """`pcm` cut into 20 ms frames of `n` samples (the tail zero-padded)."""
    pad = (-len(pcm)) % n
    full = np.concatenate([pcm, np.zeros(pad, np.int16)]) if pad else pcm
    return [full[i:i + n] for i in range(0, len(full), n)]


def _stereo(a: Pcm, b: Pcm) -> bytes:
    return np.column_stack([a, b]).astype("<i2").tobytes()


def _pair(a: Pcm, b: Pcm | None, rate: int) -> tuple[list[Pcm], list[Pcm] | None]:
    if rate != 16000:
        a = np.ascontiguousarray(soxr.resample(a, 16000, rate), np.int16)
        b = None if b is None else np.ascontiguousarray(soxr.resample(b, 16000, rate), np.int16)
    n = rate // 50
    ta = _ticks(a, n)
    if b is None:
        return ta, None
    tb = _ticks(b, n)
    m = max(len(ta), len(tb))
    zero = np.zeros(n, np.int16)
    return ta + [zero] * (m - len(ta)), tb + [zero] * (m - len(tb))


def audiohook_headers(authority: str, target: str, *, api_key: str = AUDIOHOOK_KEY,
                      secret_b64: str = AUDIOHOOK_SECRET_B64, created: int | None = None,
                      nonce: str | None = None, session_id: str | None = None) -> dict[str, str]:
    """AudioHook's signed upgrade headers (RFC 9421, hmac-sha256 over the six AudioHook components)."""
    plain = {"audiohook-organization-id": AUDIOHOOK_ORG, "audiohook-session-id": session_id or str(uuid.uuid4()),
             "audiohook-correlation-id": str(uuid.uuid4()), "x-api-key": api_key}
    created = int(time.time()) if created is None else created
    comps = ("@request-target", "@authority", *plain)
    params = (f';keyid="{api_key}";nonce="{nonce or secrets.token_urlsafe(24)}";alg="hmac-sha256"'
              f";created={created};expires={created + 30}")
    covered = "(" + " ".join(f'"{c}"' for c in comps) + ")" + params
    values = {"@request-target": target, "@authority": authority, **plain}
    base = "\n".join([*(f'"{c}": {values[c]}' for c in comps), f'"@signature-params": {covered}'])
    mac = hmac.new(base64.b64decode(secret_b64), base.encode(), hashlib.sha256).digest()
    return {**plain, "signature-input": f"sig1={covered}", "signature": f"sig1=:{_b64(mac)}:"}


@dataclass
class Plan:
    dialect: str
    call_id: str
    path: str
    legs: tuple[str, ...]  # the server's names of a's leg and b's leg
    headers: dict[str, str] = field(default_factory=dict)
    subprotocols: tuple[str, ...] = ()
    opening: list[Frame] = field(default_factory=list)
    ticks: list[list[Frame]] = field(default_factory=list)
    closing: list[Frame] = field(default_factory=list)


def plan(dialect: str, call_id: str, a: Pcm, b: Pcm | None, *, authority: str = "127.0.0.1") -> Plan:
    """One call of `dialect`: `a` on its first leg, `b` (or nothing) on its second."""
    builder = globals()[f"_plan_{dialect}"]
    result: Plan = builder(call_id, a, b, authority)
    return result


def _plan_telnyx(call_id: str, a: Pcm, b: Pcm | None, _auth: str) -> Plan:
    ta, tb = _pair(a, b, 8000)
    sid = str(uuid.uuid4())
    p = Plan("telnyx", call_id, "/telnyx", ("inbound", "outbound"), {"x-telnyx-streaming-auth-token": TELNYX_TOKEN})
    p.opening = [json.dumps({"event": "connected", "version": "1.0.0"}),
                 json.dumps({"event": "start", "sequence_number": "1", "stream_id": sid,
                             "start": {"call_control_id": call_id, "call_session_id": "s", "from": "+1", "to": "+2",
                                       "custom_parameters": {"case": call_id},
                                       "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}})]
    seq = 1
    for i, fa in enumerate(ta):
        tick: list[Frame] = []
        for track, f in (("inbound", fa), ("outbound", None if tb is None else tb[i])):
            if f is None:
                continue
            seq += 1
            tick.append(json.dumps({"event": "media", "sequence_number": str(seq), "stream_id": sid,
                                    "media": {"track": track, "chunk": str(i + 1), "timestamp": str(i * 20),
                                              "payload": _b64(encode_ulaw(f))}}))
        p.ticks.append(tick)
    p.closing = [json.dumps({"event": "stop", "sequence_number": str(seq + 1), "stream_id": sid})]
    return p


def _plan_plivo(call_id: str, a: Pcm, b: Pcm | None, _auth: str) -> Plan:
    ta, tb = _pair(a, b, 16000)
    p = Plan("plivo", call_id, "/plivo", ("inbound", "outbound"))
    tracks = ["inbound"] if tb is None else ["inbound", "outbound"]
    headers = f"case={call_id};token={FORK_SECRET}"
    p.opening = [json.dumps({"event": "start", "sequenceNumber": 0, "extra_headers": headers,
                             "start": {"callId": call_id, "streamId": "st-" + call_id, "accountId": "MA1",
                                       "tracks": tracks,
                                       "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000}}})]
    for i, fa in enumerate(ta):
        p.ticks.append([json.dumps({"event": "media", "sequenceNumber": i + 1, "streamId": "st-" + call_id,
                                    "media": {"track": t, "timestamp": str(i * 20), "chunk": i + 1,
                                              "payload": _b64(f.astype("<i2").tobytes())}})
                        for t, f in (("inbound", fa), ("outbound", None if tb is None else tb[i])) if f is not None])
    return p  # Plivo sends no stop: the socket closing ends the call


def _plan_exotel(call_id: str, a: Pcm, _b: Pcm | None, _auth: str) -> Plan:
    ta, _ = _pair(a, None, 16000)  # Exotel streams the caller's voice only
    p = Plan("exotel", call_id, "/exotel", ("inbound",), {"Authorization": _basic(EXOTEL_BASIC)})
    p.opening = [json.dumps({"event": "connected"}),
                 json.dumps({"event": "start", "sequence_number": "1", "stream_sid": "MZ" + call_id,
                             "start": {"stream_sid": "MZ" + call_id, "call_sid": call_id, "account_sid": "AC1",
                                       "from": "+91", "to": "+92", "custom_parameters": {"case": call_id},
                                       "media_format": {"encoding": "audio/x-raw", "sample_rate": "16000",
                                                        "bit_rate": "16"}}})]
    p.ticks = [[json.dumps({"event": "media", "sequence_number": str(i + 2), "stream_sid": "MZ" + call_id,
                            "media": {"chunk": str(i + 1), "timestamp": str(i * 20),
                                      "payload": _b64(f.astype("<i2").tobytes())}})] for i, f in enumerate(ta)]
    p.closing = [json.dumps({"event": "stop", "sequence_number": str(len(ta) + 2), "stream_sid": "MZ" + call_id})]
    return p


def _plan_vonage(call_id: str, a: Pcm, _b: Pcm | None, _auth: str) -> Plan:
    ta, _ = _pair(a, None, 16000)  # Vonage sends the conversation mixed: one leg
    p = Plan("vonage", call_id, "/vonage", ("mixed",))
    p.opening = [json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                             "call_uuid": call_id, "case": call_id, "token": FORK_SECRET})]
    p.ticks = [[f.astype("<i2").tobytes()] for f in ta]
    return p


def _plan_freeswitch(call_id: str, a: Pcm, b: Pcm | None, _auth: str) -> Plan:
    ta, tb = _pair(a, b if b is not None else np.zeros_like(a), 16000)
    assert tb is not None
    p = Plan("freeswitch", call_id, f"/freeswitch/{call_id}", ("caller", "callee"),
             subprotocols=("audio.drachtio.org",))
    p.opening = [json.dumps({"from": "+1", "to": "+2", "case": call_id, "token": FORK_SECRET})]
    p.ticks = [[_stereo(fa, fb)] for fa, fb in zip(ta, tb, strict=True)]
    return p


def _plan_jambonz(call_id: str, a: Pcm, b: Pcm | None, _auth: str) -> Plan:
    ta, tb = _pair(a, b if b is not None else np.zeros_like(a), 16000)
    assert tb is not None
    p = Plan("jambonz", call_id, "/jambonz", ("caller", "callee"), {"Authorization": _basic(JAMBONZ_BASIC)},
             ("audio.jambonz.org",))
    p.opening = [json.dumps({"callSid": call_id, "sampleRate": 16000, "mixType": "stereo", "from": "+1",
                             "to": "+2", "direction": "inbound", "case": call_id})]
    p.ticks = [[_stereo(fa, fb)] for fa, fb in zip(ta, tb, strict=True)]
    return p


def _plan_asterisk_ws(call_id: str, a: Pcm, _b: Pcm | None, _auth: str) -> Plan:
    ta, _ = _pair(a, None, 16000)  # one leg: what the external-media channel is bridged to
    p = Plan("asterisk_ws", call_id, "/asterisk", ("channel",), subprotocols=("media",))
    p.opening = [json.dumps({"event": "MEDIA_START", "connection_id": "c-" + call_id, "channel": "WebSocket/x",
                             "channel_id": call_id, "format": "slin16", "optimal_frame_size": 640, "ptime": 20,
                             "channel_variables": {"CASE": call_id, "TOKEN": FORK_SECRET}})]
    p.ticks = [[f.astype("<i2").tobytes()] for f in ta]
    p.closing = ["HANGUP"]
    return p


class AudioHookSeq:
    def __init__(self, session: str) -> None:
        self.session = session
        self.seq = 0

    def msg(self, kind: str, params: dict[str, Any]) -> str:
        self.seq += 1
        return json.dumps({"version": "2", "id": self.session, "type": kind, "seq": self.seq, "serverseq": 1,
                           "position": "PT0S", "parameters": params})

    def open(self, conversation_id: str, participant_id: str = "p1") -> str:
        return json.dumps({"version": "2", "id": self.session, "type": "open", "seq": 1, "serverseq": 0,
                           "position": "PT0S", "parameters": {
                               "organizationId": AUDIOHOOK_ORG, "conversationId": conversation_id,
                               "participant": {"id": participant_id, "ani": "+1555", "aniName": "A", "dnis": "+1"},
                               "media": [{"type": "audio", "format": "PCMU", "channels": ["external", "internal"],
                                          "rate": 8000}], "language": "en-US", "customConfig": {"case": "x"}}})


def _plan_audiohook(call_id: str, a: Pcm, b: Pcm | None, authority: str) -> Plan:
    ta, tb = _pair(a, b if b is not None else np.zeros_like(a), 8000)
    assert tb is not None
    session = str(uuid.uuid4())
    p = Plan("audiohook", call_id, "/audiohook", ("customer", "agent"),
             audiohook_headers(authority, "/audiohook", session_id=session))
    s = AudioHookSeq(session)
    p.opening = [s.open(call_id)]
    s.seq = 1
    p.ticks = [[bytes(np.column_stack([np.frombuffer(encode_ulaw(fa), np.uint8),
                                       np.frombuffer(encode_ulaw(fb), np.uint8)]).tobytes())]
               for fa, fb in zip(ta, tb, strict=True)]
    p.closing = [s.msg("close", {"reason": "end"})]
    return p


async def play(port: int, p: Plan, *, realtime: bool = True, replies: list[str] | None = None,
               timeout: float = 60.0) -> int | None:
    """Send a plan over a real websocket; returns the close code the server sent (None: we closed)."""
    got = replies if replies is not None else []
    async with asyncio.timeout(timeout):
        async with connect(f"ws://127.0.0.1:{port}{p.path}", additional_headers=p.headers,
                           subprotocols=[Subprotocol(s) for s in p.subprotocols] or None,
                           compression=None, open_timeout=10) as ws:
            reader = asyncio.create_task(_collect(ws, got))
            try:
                for f in p.opening:
                    await ws.send(f)
                if p.dialect == "audiohook":  # wait for "opened" before media, as Genesys does
                    await _until(lambda: any('"opened"' in r for r in got), 10)
                start = asyncio.get_running_loop().time()
                for i, tick in enumerate(p.ticks):
                    for f in tick:
                        await ws.send(f)
                    if realtime:
                        delay = start + (i + 1) * 0.02 - asyncio.get_running_loop().time()
                        if delay > 0:
                            await asyncio.sleep(delay)  # pacing the call at real time, not a synchronisation
                for f in p.closing:
                    await ws.send(f)
                if p.dialect == "audiohook":
                    await _until(lambda: any('"closed"' in r for r in got), 10)
            finally:
                if not p.closing or p.dialect == "audiohook":
                    await ws.close()
                await ws.wait_closed()
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            return ws.close_code


async def _collect(ws: ClientConnection, into: list[str]) -> None:
    async for message in ws:
        if isinstance(message, str):
            into.append(message)


async def _until(predicate: Any, timeout: float) -> None:
    """Poll observable state, bounded in count and time."""
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def audiosocket_plan(call_uuid: uuid.UUID, a: Pcm) -> list[list[bytes]]:
    """Ticks of an AudioSocket call: UUID first, 20 ms slin16 (0x12) frames, hangup last."""
    ta, _ = _pair(a, None, 16000)
    return [[audiosocket_frame(0x01, call_uuid.bytes)], *[[audiosocket_frame(0x12, f.astype("<i2").tobytes())]
                                                          for f in ta], [audiosocket_frame(0x00)]]


async def play_audiosocket(port: int, ticks: list[list[bytes]], *, realtime: bool = True,
                           timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            start = asyncio.get_running_loop().time()
            for i, tick in enumerate(ticks):
                writer.write(b"".join(tick))
                await writer.drain()
                if realtime:
                    delay = start + (i + 1) * 0.02 - asyncio.get_running_loop().time()
                    if delay > 0:
                        await asyncio.sleep(delay)  # pacing at real time
            await reader.read()  # the server closes after the hangup
        finally:
            writer.close()
            await writer.wait_closed()
