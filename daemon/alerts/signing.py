"""Standard Webhooks signatures: v1 = base64(HMAC-SHA256(key, f"{msg_id}.{timestamp}.{body}")), key =
the base64 part of a `whsec_…` secret. Several secrets (key rotation) give several signatures."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence


class SecretError(ValueError):
    pass


def secret_key(secret: str) -> bytes:
    raw = secret.strip()
    if raw.startswith("whsec_"):
        raw = raw[len("whsec_"):]
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SecretError("webhook secret is not whsec_<base64>") from None
    if len(key) < 16:
        raise SecretError("webhook secret too short (24–64 random bytes recommended)")
    return key


def parse_secrets(value: str) -> list[bytes]:
    """An environment value with one or more whitespace-separated secrets (rotation)."""
    keys = [secret_key(part) for part in value.split()]
    if not keys:
        raise SecretError("no webhook secret given")
    return keys


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    if "." in msg_id:
        raise ValueError("webhook ids must not contain '.'")
    content = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(k, content, hashlib.sha256).digest()).decode() for k in keys)
