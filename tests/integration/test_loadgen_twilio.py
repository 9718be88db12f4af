"""`spoofwatch loadgen twilio` against the real TwilioIngest (recording admission, X-Twilio-Signature
checked as by default), fast and real time."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import numpy as np
import pytest

from daemon import cli
from daemon.audio.codecs import encode_ulaw
from daemon.clock import SystemClock
from daemon.config import TwilioIngestConfig
from daemon.ingest.twilio.protocol import Media, Problem, Started, Stopped, TwilioStreamParser
from daemon.ingest.twilio.server import TwilioIngest
from daemon.ingest.twilio.signature import DEV_AUTH_TOKEN
from daemon.loadgen.twilio import FRAME_BYTES, load_clip_8k, run_twilio_calls, twilio_messages
from daemon.ops.metrics import Metrics
from tests.integration.test_twilio_server import FakeAdmission

TOKEN_ENV = "LOADGEN_TEST_TWILIO_TOKEN"
TOKEN = "loadgen-test-token"


def tone(freq: float, seconds: float, rate: int = 8000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)


def framed(ulaw: bytes) -> list[bytes]:
    out = [ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES)]
    out[-1] = out[-1].ljust(FRAME_BYTES, b"\xff")
    return out


class Server:
    def __init__(self) -> None:
        self.admission = FakeAdmission()
        self.metrics = Metrics()
        cfg = TwilioIngestConfig(auth_token_env=TOKEN_ENV)  # validate_signature: default on
        assert cfg.validate_signature
        self.ingest = TwilioIngest(cfg, self.admission, self.metrics, SystemClock())
        self.url = ""

    def drops(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value("spoofwatch_drops_total", {"ingest": "twilio", "reason": reason})
        return value or 0.0

    async def wait_ended(self, n: int) -> None:
        await self.admission.wait_ended(n)


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)  # the CLI's default must not come from the runner
    s = Server()
    port = await s.ingest.start()
    s.url = f"ws://127.0.0.1:{port}/twilio"
    try:
        yield s
    finally:
        await s.ingest.close(timeout=5.0)


def test_messages_are_twilio_shaped() -> None:
    inbound, outbound = bytes(range(200)) * 2, b"\x01" * 300  # 400 B → 3 frames, 300 B → 2 frames
    opening, ticks, stop = twilio_messages({"inbound": inbound, "outbound": outbound}, call_sid="CAx",
                                           stream_sid="MZx", params={"k": "v"})
    msgs = [json.loads(m) for m in [*opening, *(m for t in ticks for m in t), stop]]
    assert [m["event"] for m in msgs] == ["connected", "start"] + ["media"] * 6 + ["stop"]
    assert [int(m["sequenceNumber"]) for m in msgs[1:]] == list(range(1, 9))
    start = msgs[1]["start"]
    assert start["customParameters"] == {"k": "v"} and start["tracks"] == ["inbound", "outbound"]
    media = [m["media"] for m in msgs[2:8]]
    assert [(m["track"], m["chunk"], m["timestamp"]) for m in media] == [
        ("inbound", "1", "0"), ("outbound", "1", "0"), ("inbound", "2", "20"), ("outbound", "2", "20"),
        ("inbound", "3", "40"), ("outbound", "3", "40")]
    # and our own parser reads them without a single problem
    p = TwilioStreamParser()
    events = [e for i, m in enumerate([*opening, *(m for t in ticks for m in t), stop])
              for e in p.receive_text(m, i * 0.01)]
    assert not [e for e in events if isinstance(e, Problem)]
    assert isinstance(events[1], Started) and isinstance(events[-1], Stopped)
    got = b"".join(e.payload for e in events if isinstance(e, Media) and e.track == "outbound")
    assert got == outbound + b"\xff" * (20 + 160)  # the short track is padded to whole frames, then to length


async def test_fast_calls_deliver_every_frame(server: Server) -> None:
    inbound, outbound = tone(440, 1.0), tone(1000, 0.5)
    result = await run_twilio_calls(server.url, calls=3, inbound_pcm8k=inbound, outbound_pcm8k=outbound,
                                    realtime=False, params={"case": "fast"}, auth_token=TOKEN)
    assert result.calls_ok == 3, result.errors
    assert result.frames_sent == 3 * 2 * 50
    await server.wait_ended(3)
    want_in = framed(encode_ulaw(inbound))
    want_out = framed(encode_ulaw(outbound)) + [b"\xff" * FRAME_BYTES] * 25
    assert sorted(server.admission.calls) == sorted(result.call_sids)
    for call in server.admission.calls.values():
        assert call.info.metadata["case"] == "fast"
        assert call.legs["inbound"].payloads == want_in
        assert call.legs["outbound"].payloads == want_out
        assert call.end_reason == "stop"
        assert call.legs["inbound"].silence == []


async def test_realtime_one_second(server: Server) -> None:
    result = await run_twilio_calls(server.url, calls=2, inbound_pcm8k=tone(300, 1.0), realtime=True, ramp_s=0.1,
                                    auth_token=TOKEN)
    assert result.calls_ok == 2, result.errors
    assert result.frames_sent == 100
    # real time: no frame goes out before it is due, so the second call (started 50 ms in) cannot have
    # sent its 50th frame before 50 ms + 49 x 20 ms
    assert result.elapsed_s >= 0.05 + 49 * 0.02
    await server.wait_ended(2)
    for call in server.admission.calls.values():
        assert list(call.legs) == ["inbound"] and len(call.legs["inbound"].payloads) == 50
    assert "late frames" in result.summary()


async def test_unreachable_daemon_reports_errors() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = await run_twilio_calls(f"ws://127.0.0.1:{port}/twilio", calls=2, inbound_pcm8k=tone(300, 0.1),
                                    realtime=False)
    assert result.calls_ok == 0 and len(result.errors) == 2


async def test_cli(server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["loadgen", "twilio", "--url", server.url, "--calls", "1", "--clip", "marked", "--track", "both",
            "--other-clip", "clean", "--param", "case=spoof", "--fast", "--auth-token", TOKEN]
    rc = await asyncio.to_thread(cli.main, argv)  # the CLI runs its own event loop
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "calls: 1/1" in out
    await server.wait_ended(1)
    (call,) = server.admission.calls.values()
    assert call.info.metadata["case"] == "spoof"
    marked, clean = load_clip_8k("marked"), load_clip_8k("clean")
    assert call.legs["inbound"].payloads[:10] == framed(encode_ulaw(marked))[:10]
    assert call.legs["outbound"].payloads[:10] == framed(encode_ulaw(clean))[:10]


def test_cli_bad_clip(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["loadgen", "twilio", "--url", "ws://127.0.0.1:9/twilio", "--clip", "/nonexistent.wav"])
    assert rc == 2
    assert "cannot read clip" in capsys.readouterr().err


async def test_unsigned_and_wrongly_signed_upgrades_are_refused(server: Server) -> None:
    unsigned = await run_twilio_calls(server.url, calls=1, inbound_pcm8k=tone(300, 0.1), realtime=False)
    wrong = await run_twilio_calls(server.url, calls=1, inbound_pcm8k=tone(300, 0.1), realtime=False,
                                   auth_token="not-the-token")
    assert unsigned.calls_ok == 0 and "HTTP 403" in unsigned.errors[0]
    assert wrong.calls_ok == 0 and "HTTP 403" in wrong.errors[0]
    assert server.drops("signature_missing") == 1 and server.drops("signature_invalid") == 1
    assert server.admission.history == []


async def test_signed_url_override_for_a_daemon_behind_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    cfg = TwilioIngestConfig(auth_token_env=TOKEN_ENV, public_base_url="wss://voice.example.com")
    admission = FakeAdmission()
    ingest = TwilioIngest(cfg, admission, Metrics(), SystemClock())
    port = await ingest.start()
    try:
        url = f"ws://127.0.0.1:{port}/twilio"
        as_dialled = await run_twilio_calls(url, calls=1, inbound_pcm8k=tone(300, 0.1), realtime=False,
                                            auth_token=TOKEN)
        assert as_dialled.calls_ok == 0  # the daemon rebuilds wss://voice.example.com/twilio, not this URL
        proxied = await run_twilio_calls(url, calls=1, inbound_pcm8k=tone(300, 0.1), realtime=False,
                                         auth_token=TOKEN, signed_url="wss://voice.example.com/twilio")
        assert proxied.calls_ok == 1, proxied.errors
    finally:
        await ingest.close(timeout=5.0)


@pytest.mark.parametrize("source", ["env", "dev_default"])
async def test_cli_signs_with_env_token_else_the_dev_token(monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    """Without --auth-token the CLI signs with $TWILIO_AUTH_TOKEN, else the token `make run` gives the daemon."""
    token = "from-the-environment" if source == "env" else DEV_AUTH_TOKEN
    monkeypatch.setenv(TOKEN_ENV, token)
    if source == "env":
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", token)
    else:
        monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    s = Server()
    port = await s.ingest.start()
    try:
        argv = ["loadgen", "twilio", "--url", f"ws://127.0.0.1:{port}/twilio", "--clip", "clean", "--fast"]
        rc = await asyncio.to_thread(cli.main, argv)
        assert rc == 0
        await s.wait_ended(1)
        assert len(s.admission.history) == 1
    finally:
        await s.ingest.close(timeout=5.0)
