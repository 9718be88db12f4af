"""The loadgen's Genesys AudioHook client, against the SERVER's code: its signed upgrade must pass
`verify_audiohook_upgrade`, and a whole session (open, pings, pause/resume, audio, close) played
into `AudioHookServerParser`, with the parser's replies fed back, must be a clean call."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from daemon.audio.codecs import encode_ulaw
from daemon.ingest.forks.audiohook import AudioHookServerParser
from daemon.ingest.forks.audiohook_signature import NonceCache, verify_audiohook_upgrade
from daemon.ingest.forks.events import Audio, CallEnd, CallStart, Pause, Problem, Reply, Resume
from daemon.loadgen.forks_audiohook import PROBE_ID, AudioHookPlan, signed_upgrade_headers

API_KEY = "loadgen-api-key"
SECRET = base64.b64encode(b"a client secret of some length!!").decode()
SESSION = "30b0e395-84d3-4570-ac13-9a62d8f514c0"
ORG = "d7934305-0972-4844-938e-9060eef73d05"
NOW = 1_800_000_000.0


def verify(headers: dict[str, str], *, now: float = NOW + 1, secret: str = SECRET, nonces: NonceCache | None = None,
           target: str = "/audiohook?x=1") -> str:
    v = verify_audiohook_upgrade(method="GET", authority="127.0.0.1:8080", target=target,
                                 headers={k.lower(): v for k, v in headers.items()}, now=now, api_key=API_KEY,
                                 client_secret_b64=secret, nonces=NonceCache() if nonces is None else nonces)
    return "ok" if v.ok else v.reason


def sign(**kw: Any) -> dict[str, str]:
    args: dict[str, Any] = {"authority": "127.0.0.1:8080", "target": "/audiohook?x=1", "organization_id": ORG,
                            "session_id": SESSION, "correlation_id": "c0rr", "api_key": API_KEY,
                            "client_secret_b64": SECRET, "now": NOW}
    args.update(kw)
    return signed_upgrade_headers(**args)


def test_signed_upgrade_passes_the_servers_check() -> None:
    headers = sign()
    assert headers["Signature-Input"].startswith('sig1=("@request-target" "@authority" "audiohook-organization-id" '
                                                 '"audiohook-session-id" "audiohook-correlation-id" "x-api-key")')
    nonces = NonceCache()
    assert verify(headers, nonces=nonces) == "ok"
    assert verify(headers, nonces=nonces) == "signature_replayed"
    assert verify(sign(), target="/other") == "signature_mismatch"
    assert verify(sign(), secret=base64.b64encode(b"another secret").decode()) == "signature_mismatch"
    assert verify(sign(), now=NOW + 60) == "signature_expired"
    assert verify(sign(api_key="wrong")) == "api_key_unknown"
    assert sign()["Signature"] != sign()["Signature"]  # a fresh nonce every time


def test_empty_secret_gives_an_unsigned_upgrade() -> None:
    headers = sign(client_secret_b64="")
    assert "Signature" not in headers and headers["X-API-KEY"] == API_KEY
    assert verify(headers, secret="") == "ok"
    assert verify(headers) == "signature_missing"


def tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 8000)) / 8000
    return (np.sin(2 * np.pi * freq * t) * 9000).astype(np.int16)


def play(plan: AudioHookPlan) -> tuple[list[Any], Any]:
    """One session through the server parser; every server reply goes back to the client."""
    server = AudioHookServerParser(organization_id=plan.organization_id)
    client = plan.client(SESSION)
    events: list[Any] = []

    def send_text(text: str) -> None:
        for e in server.receive_text(text):
            events.append(e)
            if isinstance(e, Reply):
                assert isinstance(e.payload, str)
                client.receive_text(e.payload)

    send_text(client.open())
    assert client.opened
    frames = plan.layouts[client.channels] if client.channels else []
    for i in range(client.n_ticks):
        tick = client.tick(i)
        for text in tick.texts:
            send_text(text)
        if tick.audio is not None:
            events += server.receive_binary(frames[tick.audio])
    send_text(client.close())
    return events, client


def test_session_round_trip_with_pings_and_pause() -> None:
    customer, agent = encode_ulaw(tone(440, 1.0)), encode_ulaw(tone(1000, 0.7))
    plan = AudioHookPlan(customer, agent, api_key=API_KEY, client_secret_b64=SECRET, organization_id=ORG,
                         ping_s=0.2, pause_at_s=0.5, pause_s=0.3, params={"tenant": "t"})
    events, client = play(plan)
    assert not [e for e in events if isinstance(e, Problem)]
    assert client.problems == [] and client.closed and client.channels == ("external", "internal")
    start = next(e for e in events if isinstance(e, CallStart))
    assert start.call_id == client.conversation_id and start.metadata["custom.tenant"] == "t"
    assert [leg.name for leg in start.legs] == ["customer", "agent"]
    got: dict[str, bytes] = {}
    for e in events:
        if isinstance(e, Audio):
            got[e.leg] = got.get(e.leg, b"") + e.payload
    assert got["customer"] == customer and got["agent"] == agent.ljust(len(customer), b"\xff")
    assert client.pings >= 5 and client.pongs == client.pings
    kinds = [type(e).__name__ for e in events if isinstance(e, Pause | Resume | CallEnd)]
    assert kinds == ["Pause", "Resume", "CallEnd"]
    assert client.n_ticks == 50 + 15


def test_probe_opens_and_closes_without_a_call() -> None:
    plan = AudioHookPlan(b"\xff" * 800, b"\xff" * 800, api_key=API_KEY, client_secret_b64=SECRET, probe=True)
    events, client = play(plan)
    assert client.conversation_id == PROBE_ID and client.n_ticks == 0
    assert not [e for e in events if isinstance(e, CallStart | Problem)]
    assert client.closed and client.problems == []


@pytest.mark.parametrize("reply", [
    '{"version":"2","type":"pong","seq":5,"clientseq":1,"id":"' + SESSION + '","parameters":{}}',
    '{"version":"2","type":"pong","seq":1,"clientseq":9,"id":"' + SESSION + '","parameters":{}}',
    '{"version":"2","type":"pong","seq":1,"clientseq":1,"id":"other","parameters":{}}',
    "not json",
])
def test_client_reports_server_protocol_errors(reply: str) -> None:
    plan = AudioHookPlan(b"\xff" * 160, b"\xff" * 160, api_key=API_KEY, client_secret_b64=SECRET)
    client = plan.client(SESSION)
    client.open()
    client.receive_text(reply)
    assert client.problems
