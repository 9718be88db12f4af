"""RFC 9421 verification as AudioHook uses it, against published vectors (RFC 9421 B.2.5 and the
AudioHook documentation example used by purecloudlabs/audiohook-reference-implementation)."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from daemon.ingest.forks.audiohook_signature import (
    NonceCache,
    verify_audiohook_upgrade,
    verify_signature,
)
from daemon.ingest.forks.sfv import SfvError, parse_dictionary

API_KEY = "SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"
SECRET_B64 = "TXlTdXBlclNlY3JldEtleVRlbGxOby0xITJAMyM0JDU="
SIG_INPUT = ('sig1=("@request-target" "@authority" "audiohook-organization-id" "audiohook-session-id" '
             '"audiohook-correlation-id" "x-api-key");keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh";'
             'nonce="VGhpc0lzQVVuaXF1ZU5vbmNl";alg="hmac-sha256";created=1641013200;expires=3282026430')
TARGET = "/api/v1/voicebiometrics/ws"
AUTHORITY = "audiohook.example.com"
CREATED = 1641013200


def doc_headers(**over: str) -> dict[str, str]:
    h = {
        "host": AUTHORITY,
        "audiohook-organization-id": "d7934305-0972-4844-938e-9060eef73d05",
        "audiohook-session-id": "30b0e395-84d3-4570-ac13-9a62d8f514c0",
        "audiohook-correlation-id": "e160e428-53e2-487c-977d-96989bf5c99d",
        "x-api-key": API_KEY,
        "signature": "sig1=:NZBwyBHRRyRoeLqy1IzOa9VYBuI8TgMFt2GRDkDuJh4=:",
        "signature-input": SIG_INPUT,
    }
    h.update(over)
    return h


def check(headers: dict[str, str], now: float = CREATED + 2, nonces: NonceCache | None = None,
          secret: str = SECRET_B64, target: str = TARGET) -> str:
    v = verify_audiohook_upgrade(method="GET", authority=AUTHORITY, target=target, headers=headers, now=now,
                                 api_key=API_KEY, client_secret_b64=secret,
                                 nonces=NonceCache() if nonces is None else nonces)
    return "ok" if v.ok else v.reason


def test_audiohook_documentation_example_verifies() -> None:
    assert check(doc_headers()) == "ok"


def test_rfc9421_b25_hmac_vector() -> None:
    key = base64.b64decode("uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==")
    headers = {
        "date": "Tue, 20 Apr 2021 02:07:55 GMT",
        "content-type": "application/json",
        "signature-input": 'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"',
        "signature": "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:",
    }
    verdict, params = verify_signature(method="POST", authority="example.com", target="/foo?param=Value&Pet=dog",
                                       headers=headers, key=key, now=1618884475)
    assert verdict.ok, verdict
    assert params["keyid"] == "test-shared-secret"
    wrong, _ = verify_signature(method="POST", authority="example.org", target="/", headers=headers, key=key,
                                now=1618884475)
    assert wrong.reason == "signature_mismatch"


@pytest.mark.parametrize(("change", "reason"), [
    ({"x-api-key": "other"}, "api_key_unknown"),
    ({"audiohook-session-id": "30b0e395-84d3-4570-ac13-9a62d8f514c1"}, "signature_mismatch"),
    ({"signature": "sig1=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:"}, "signature_mismatch"),
    ({"signature": "sig1=not-bytes"}, "signature_invalid"),
    ({"signature-input": "sig1=(\"@authority\";created=1"}, "signature_invalid"),
    ({"signature-input": SIG_INPUT.replace('"x-api-key")', ")")}, "signature_invalid"),  # not covered
    ({"signature-input": SIG_INPUT.replace('alg="hmac-sha256"', 'alg="rsa-v1_5-sha256"')}, "signature_unsupported"),
])
def test_tampering_is_refused(change: dict[str, str], reason: str) -> None:
    assert check(doc_headers(**change)) == reason


def test_missing_api_key_and_missing_signature() -> None:
    h = doc_headers()
    del h["x-api-key"]
    assert check(h) == "api_key_missing"
    h = doc_headers()
    del h["signature"], h["signature-input"]
    assert check(h) == "signature_missing"
    # unsigned is accepted only when the configured client secret is empty (reference behaviour)
    assert check(h, secret="") == "ok"
    h = doc_headers()
    del h["signature"]
    assert check(h) == "signature_invalid"


def test_age_and_clock_skew() -> None:
    assert check(doc_headers(), now=CREATED + 13) == "ok"  # 10 s max age + 3 s skew
    assert check(doc_headers(), now=CREATED + 14) == "signature_expired"
    assert check(doc_headers(), now=CREATED - 3) == "ok"
    assert check(doc_headers(), now=CREATED - 4) == "signature_expired"  # created in the future


def test_nonce_replay_is_refused_until_it_could_not_verify_anyway() -> None:
    cache = NonceCache()
    assert check(doc_headers(), nonces=cache) == "ok"
    assert check(doc_headers(), nonces=cache, now=CREATED + 5) == "signature_replayed"
    assert len(cache) == 1
    assert check(doc_headers(), nonces=cache, now=CREATED + 14) == "signature_expired"
    cache.seen("x", CREATED + 100)
    assert len(cache) == 0  # expired entries are forgotten


def test_failed_verifications_do_not_fill_the_nonce_cache() -> None:
    cache = NonceCache()
    check(doc_headers(signature="sig1=:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=:"), nonces=cache)
    assert len(cache) == 0


def test_nonce_cache_is_bounded() -> None:
    cache = NonceCache(max_entries=3)
    for i in range(5):
        cache.add(f"n{i}", 100.0, 0.0)
    assert len(cache) == 3 and cache.evicted == 2
    assert not cache.seen("n0", 0.0) and cache.seen("n4", 0.0)


def sign(headers: dict[str, str], key: bytes, sig_input: str) -> str:
    inner = sig_input.split("=", 1)[1]
    comps = inner[1:inner.index(")")].split()
    lines = []
    for c in comps:
        name = c.strip('"')
        value = TARGET if name == "@request-target" else AUTHORITY if name == "@authority" else headers[name]
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {inner}')
    mac = hmac.new(key, "\n".join(lines).encode(), hashlib.sha256).digest()
    return "sig1=:" + base64.b64encode(mac).decode() + ":"


def test_keyid_must_equal_x_api_key_and_nonce_must_be_long() -> None:
    key = base64.b64decode(SECRET_B64)
    for old, new, reason in (('keyid="SGVsbG8sIEkgYW0gdGhlIEFQSSBrZXkh"', 'keyid="someone-else"', "signature_invalid"),
                             ('nonce="VGhpc0lzQVVuaXF1ZU5vbmNl"', 'nonce="short"', "signature_invalid")):
        h = doc_headers(**{"signature-input": SIG_INPUT.replace(old, new)})
        h["signature"] = sign(h, key, h["signature-input"])
        assert check(h) == reason


@pytest.mark.parametrize("text", ["", "a=", "A=1", "a=(", 'a="x', "a=:!!:", "a=1,", "a=1 b=2", "a=?2", "a=--1"])
def test_structured_field_parser_rejects_garbage(text: str) -> None:
    if text == "":
        assert parse_dictionary(text) == {}
        return
    with pytest.raises(SfvError):
        parse_dictionary(text)
