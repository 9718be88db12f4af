"""X-Twilio-Signature: the official vector, URL rebuilding, and the check in the real handshake."""

from __future__ import annotations

import logging

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from daemon.calls.api import CallRefused
from daemon.clock import SystemClock
from daemon.config import ConfigError, TwilioIngestConfig
from daemon.ingest.twilio.server import TwilioIngest
from daemon.ingest.twilio.signature import (
    DEV_AUTH_TOKEN,
    expected_url,
    signature_valid,
    twilio_signature,
    url_as_twilio_signs,
)
from daemon.model import CallInfo
from daemon.ops.metrics import Metrics

TOKEN = "12345"
VECTOR = "7PR3qMkpDyEJtMrVOY/LDyNq8J8="  # twilio 9.13.0 RequestValidator("12345"), wss://example.com/media


def test_official_vector() -> None:
    assert twilio_signature(TOKEN, "wss://example.com/media") == VECTOR


def test_valid_with_and_without_default_port() -> None:
    assert signature_valid(TOKEN, "wss://example.com/media", VECTOR)
    assert signature_valid(TOKEN, "wss://example.com:443/media", VECTOR)
    signed_with_port = twilio_signature(TOKEN, "wss://example.com:443/media")
    assert signature_valid(TOKEN, "wss://example.com/media", signed_with_port)


@pytest.mark.parametrize(
    ("url", "sig"),
    [
        ("https://example.com/media", VECTOR),  # the scheme is signed
        ("wss://example.com/media2", VECTOR),
        ("wss://example.com:8443/media", VECTOR),
        ("wss://example.com/media", VECTOR[:-2] + "A="),
        ("wss://example.com/media", ""),
        ("wss://example.com/media", None),
        ("wss://example.com/media", "ünïcode"),
    ],
)
def test_invalid(url: str, sig: str | None) -> None:
    assert not signature_valid(TOKEN, url, sig)


def test_wrong_token() -> None:
    assert not signature_valid("54321", "wss://example.com/media", VECTOR)


def test_expected_url() -> None:
    assert expected_url("", "example.com", "/media") == "wss://example.com/media"
    assert expected_url("wss://voice.example.com/", "127.0.0.1:8080", "/twilio") == "wss://voice.example.com/twilio"
    assert expected_url("wss://voice.example.com", None, "/twilio") == "wss://voice.example.com/twilio"


# the check in the handshake -----------------------------------------------------------------------
class RefuseAll:
    def admit(self, info: CallInfo) -> object:
        raise CallRefused("test")


def _cfg(**kw: object) -> TwilioIngestConfig:
    # validate_signature is not given: it is on by default
    return TwilioIngestConfig(auth_token_env="TEST_TWILIO_TOKEN", **kw)  # type: ignore[arg-type]


def test_signature_check_is_on_by_default() -> None:
    assert TwilioIngestConfig().validate_signature is True


def test_url_as_twilio_signs_keeps_everything_but_the_ws_scheme() -> None:
    assert url_as_twilio_signs("ws://127.0.0.1:8080/twilio?x=1") == "wss://127.0.0.1:8080/twilio?x=1"
    assert url_as_twilio_signs("WS://h/p") == "wss://h/p"
    assert url_as_twilio_signs("wss://voice.example.com/twilio") == "wss://voice.example.com/twilio"


def _drops(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("spoofwatch_drops_total", {"ingest": "twilio", "reason": reason}) or 0


async def test_missing_token_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_TWILIO_TOKEN", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    ingest = TwilioIngest(_cfg(), RefuseAll(), Metrics(), SystemClock())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"validate_signature is true .* TEST_TWILIO_TOKEN is not set") as info:
        await ingest.start()
    assert "make run" in str(info.value)
    assert ingest.open_streams == 0


async def test_dev_token_is_accepted_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TEST_TWILIO_TOKEN", DEV_AUTH_TOKEN)
    ingest = TwilioIngest(_cfg(), RefuseAll(), Metrics(), SystemClock())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="spoofwatch.ingest.twilio"):
        port = await ingest.start()
    try:
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "development token" in r.message]
        assert len(warnings) == 1 and "TEST_TWILIO_TOKEN" in warnings[0].message
        signed = twilio_signature(DEV_AUTH_TOKEN, f"wss://127.0.0.1:{port}/twilio")
        async with connect(f"ws://127.0.0.1:{port}/twilio", additional_headers={"X-Twilio-Signature": signed}) as ws:
            assert ws.protocol.state.name == "OPEN"
    finally:
        await ingest.close(timeout=5.0)


async def test_own_token_gives_no_dev_warning(monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TEST_TWILIO_TOKEN", TOKEN)
    ingest = TwilioIngest(_cfg(), RefuseAll(), Metrics(), SystemClock())  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="spoofwatch.ingest.twilio"):
        await ingest.start()
    await ingest.close(timeout=5.0)
    assert not [r for r in caplog.records if "development token" in r.message]


@pytest.mark.parametrize("public", ["", "wss://voice.example.com"])
async def test_handshake_good_bad_missing(monkeypatch: pytest.MonkeyPatch, public: str) -> None:
    monkeypatch.setenv("TEST_TWILIO_TOKEN", TOKEN)
    metrics = Metrics()
    ingest = TwilioIngest(_cfg(public_base_url=public), RefuseAll(), metrics, SystemClock())  # type: ignore[arg-type]
    port = await ingest.start()
    try:
        url = f"ws://127.0.0.1:{port}/twilio"
        # behind a proxy Twilio signs the public URL; directly, wss://<Host header><path>
        signed_url = f"{public}/twilio" if public else f"wss://127.0.0.1:{port}/twilio"
        good = twilio_signature(TOKEN, signed_url)
        async with connect(url, additional_headers={"X-Twilio-Signature": good}) as ws:
            assert ws.protocol.state.name == "OPEN"
        for headers, reason in (({"X-Twilio-Signature": twilio_signature("wrong", signed_url)}, "signature_invalid"),
                                ({}, "signature_missing")):
            with pytest.raises(InvalidStatus) as info:
                async with connect(url, additional_headers=headers):
                    pass
            assert info.value.response.status_code == 403
            assert _drops(metrics, reason) == 1
    finally:
        await ingest.close(timeout=5.0)
