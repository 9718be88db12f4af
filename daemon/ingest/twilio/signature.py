"""X-Twilio-Signature on the websocket upgrade.

Twilio signs the upgrade with base64(HMAC-SHA1(auth_token, url)) where `url` is the exact `wss://`
URL it dialled. A websocket upgrade is a GET, so no POST parameters are appended (unlike webhooks).
Behind a TLS-terminating proxy the daemon sees `ws://` and maybe another Host: set
`public_base_url` (e.g. "wss://voice.example.com") so the URL Twilio signed can be rebuilt.
An `https://` URL does not validate: the scheme is part of what is signed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SIGNATURE_HEADER = "X-Twilio-Signature"

#: The auth token `make run` gives the daemon and `spoofwatch loadgen twilio` signs with by default, so the
#: two work together on a developer's machine. It is public: the daemon warns loudly while it is in use.
DEV_AUTH_TOKEN = "local-dev-twilio-token"


def twilio_signature(auth_token: str, url: str) -> str:
    digest = hmac.new(auth_token.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def expected_url(public_base_url: str, host_header: str | None, path: str) -> str:
    """The URL Twilio dialled: `public_base_url` + path when configured, else wss://<Host><path>
    (Twilio only dials wss://, so a daemon reached directly must terminate TLS itself or sit behind
    a proxy; either way the signed scheme is wss)."""
    if public_base_url:
        return public_base_url.rstrip("/") + path
    return f"wss://{host_header or ''}{path}"


def url_as_twilio_signs(dial_url: str) -> str:
    """The URL a client dialling `dial_url` signs, as Twilio would: Twilio only ever dials (and signs)
    `wss://`, and a daemon reached without TLS rebuilds the `wss://` URL from its Host header
    (`expected_url`), so a `ws://` URL is signed as its `wss://` twin; host, port, path and query stay
    exactly as dialled."""
    scheme, sep, rest = dial_url.partition("://")
    if sep and scheme.lower() == "ws":
        return "wss://" + rest
    return dial_url


def _with_default_port(url: str) -> str | None:
    """wss://host/path → wss://host:443/path: Twilio's own validator accepts both spellings."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    host, slash, path = rest.partition("/")
    if ":" in host.rsplit("]", 1)[-1]:
        return None
    port = {"wss": 443, "ws": 80}.get(scheme)
    if port is None:
        return None
    return f"{scheme}://{host}:{port}{slash}{path}"


def _without_default_port(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    suffix = {"wss": ":443", "ws": ":80"}.get(scheme)
    if not sep or suffix is None or not host.endswith(suffix):
        return None
    return f"{scheme}://{host[: -len(suffix)]}{slash}{path}"


def signature_valid(auth_token: str, url: str, signature: str | None) -> bool:
    """Constant-time check of `signature` against `url` (also with the default port added or removed)."""
    if not signature:
        return False
    given = signature.encode("ascii", "replace")
    ok = False
    for candidate in (url, _with_default_port(url), _without_default_port(url)):
        if candidate is not None:
            # no short-circuit: every candidate is compared, so timing does not reveal which matched
            ok |= hmac.compare_digest(twilio_signature(auth_token, candidate).encode("ascii"), given)
    return ok
