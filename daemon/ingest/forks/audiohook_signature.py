"""RFC 9421 HTTP Message Signatures as Genesys AudioHook signs its websocket upgrade (pure functions).

Sources: RFC 9421 (signature base §2.5, `@request-target`/`@authority`/`@method`/`@path`/`@query`
derived components §2.2, `created`/`expires`/`nonce`/`alg`/`keyid` parameters §2.3, hmac-sha256
§3.3.3, test vector B.2.5); RFC 8941 structured fields (`Signature-Input` and `Signature` are
Dictionaries); repo purecloudlabs/audiohook-reference-implementation
app/audiohook/src/httpsignature/signature-verifier.ts and app/src/authenticator.ts: AudioHook signs
`@request-target`, `@authority`, `audiohook-organization-id`, `audiohook-session-id`,
`audiohook-correlation-id` and `x-api-key`, label `sig1`, `alg="hmac-sha256"`, `keyid` = the API key
(must equal `X-API-KEY`), `nonce` (≥ 22 chars), `created`, `expires` = created + 30; the key is
the base64-decoded client secret; the reference server accepts signatures up to 10 s old, 3 s of
clock skew, and unsigned requests only when the client secret is empty.

Everything is a pure function of its arguments: `now` is wall-clock seconds passed in, the nonce
cache is passed in (and mutated only when a signature verified). Results are `Verdict(ok, reason)`
with a short metric label as reason; nothing raises on bad input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from daemon.ingest.forks.sfv import InnerList, SfvError, parse_dictionary, serialize_inner_list

AUDIOHOOK_COMPONENTS = ("@request-target", "@authority", "audiohook-organization-id", "audiohook-session-id",
                        "audiohook-correlation-id", "x-api-key")
MAX_CLOCK_SKEW_S = 3
MIN_NONCE_CHARS = 22


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str = ""  # metric label when not ok: signature_missing, signature_invalid, expired, …
    detail: str = ""


class NonceCache:
    """Nonces seen in verified signatures, remembered until their signature could no longer be
    accepted anyway (created + max age + skew). Bounded: when full of live entries the oldest is
    evicted (counted in `evicted`): the cap must exceed the upgrades per max-age window."""

    def __init__(self, max_entries: int = 10000) -> None:
        self.max_entries = max_entries
        self.evicted = 0
        self._until: OrderedDict[str, float] = OrderedDict()

    def seen(self, nonce: str, now: float) -> bool:
        self._expire(now)
        return nonce in self._until

    def add(self, nonce: str, until: float, now: float) -> None:
        self._expire(now)
        while len(self._until) >= self.max_entries:
            self._until.popitem(last=False)
            self.evicted += 1
        self._until[nonce] = until

    def _expire(self, now: float) -> None:
        while self._until:
            nonce, until = next(iter(self._until.items()))
            if until >= now:
                break
            del self._until[nonce]

    def __len__(self) -> int:
        return len(self._until)


def canonical_field(value: str) -> str:
    """RFC 9421 §2.1: trim, and fold obsolete line folding into one space."""
    return " ".join(part.strip(" \t") for part in value.strip().split("\r\n"))


def _fail(reason: str, detail: str) -> Verdict:
    return Verdict(False, reason, detail)


def verify_signature(*, method: str, authority: str, target: str, headers: Mapping[str, str], key: bytes,
                     now: float, required: tuple[str, ...] = (), max_age_s: float | None = None,
                     label: str | None = None) -> tuple[Verdict, dict[str, str | int]]:
    """Verify one hmac-sha256 signature. `headers` keys must be lower-case. `target` is the request
    target as received (path and query). Returns the verdict and the signature parameters."""
    raw_input, raw_sig = headers.get("signature-input"), headers.get("signature")
    if raw_input is None and raw_sig is None:
        return _fail("signature_missing", "no Signature-Input/Signature"), {}
    if raw_input is None or raw_sig is None:
        return _fail("signature_invalid", "only one of Signature-Input/Signature"), {}
    try:
        inputs = parse_dictionary(raw_input)
        sigs = parse_dictionary(raw_sig)
    except SfvError as exc:
        return _fail("signature_invalid", f"structured field: {exc}"), {}
    if not inputs:
        return _fail("signature_invalid", "empty Signature-Input"), {}
    name = label if label is not None else next(iter(inputs))
    covered, sig = inputs.get(name), sigs.get(name)
    if not isinstance(covered, InnerList) or not isinstance(sig, bytes):
        return _fail("signature_invalid", f"label {name!r} missing or malformed"), {}
    params = dict(covered.params)
    for key_name, value in params.items():
        if key_name in ("created", "expires") and not (isinstance(value, int) and not isinstance(value, bool)):
            return _fail("signature_invalid", f"{key_name} is not an integer"), params_str(params)
        if key_name in ("keyid", "nonce", "alg", "tag") and not isinstance(value, str):
            return _fail("signature_invalid", f"{key_name} is not a string"), params_str(params)
    if params.get("alg", "hmac-sha256") != "hmac-sha256":
        return _fail("signature_unsupported", f"alg {params.get('alg')!r}"), params_str(params)
    created, expires = params.get("created"), params.get("expires")
    if isinstance(created, int) and created > now + MAX_CLOCK_SKEW_S:
        return _fail("signature_expired", "created is in the future"), params_str(params)
    if isinstance(expires, int) and expires + MAX_CLOCK_SKEW_S < now:
        return _fail("signature_expired", "expires has passed"), params_str(params)
    if max_age_s is not None:
        if not isinstance(created, int):
            return _fail("signature_invalid", "no created parameter"), params_str(params)
        if created + max_age_s + MAX_CLOCK_SKEW_S < now:
            return _fail("signature_expired", f"older than {max_age_s} s"), params_str(params)
    lines: list[str] = []
    seen: set[str] = set()
    for item in covered.items:
        if not isinstance(item.value, str) or item.params:
            return _fail("signature_unsupported", f"component {item.value!r} malformed or with parameters"), \
                params_str(params)
        comp = str(item.value)
        if comp in seen or comp == "@signature-params":
            return _fail("signature_invalid", f"component {comp} repeated or forbidden"), params_str(params)
        seen.add(comp)
        comp_value = _component(comp, method, authority, target, headers)
        if comp_value is None:
            return _fail("signature_invalid", f"component {comp} not available"), params_str(params)
        lines.append(f'"{comp}": {comp_value}')
    missing = [c for c in required if c not in seen]
    if missing:
        return _fail("signature_invalid", f"does not cover {missing}"), params_str(params)
    lines.append(f'"@signature-params": {serialize_inner_list(covered)}')
    expected = hmac.new(key, "\n".join(lines).encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, sig):
        return _fail("signature_mismatch", "HMAC does not match"), params_str(params)
    return Verdict(True), params_str(params)


def params_str(params: Mapping[str, object]) -> dict[str, str | int]:
    return {k: v for k, v in params.items() if isinstance(v, str | int) and not isinstance(v, bool)}


def _component(name: str, method: str, authority: str, target: str, headers: Mapping[str, str]) -> str | None:
    if name == "@request-target":
        return target
    if name == "@authority":
        return (authority or headers.get("host", "")).lower() or None
    if name == "@method":
        return method.upper()
    if name == "@path":
        return target.partition("?")[0] or None
    if name == "@query":
        return "?" + target.partition("?")[2]
    if name.startswith("@"):
        return None
    value = headers.get(name)
    return canonical_field(value) if value is not None else None


def verify_audiohook_upgrade(*, method: str, authority: str, target: str, headers: Mapping[str, str],
                             now: float, api_key: str, client_secret_b64: str, nonces: NonceCache,
                             max_age_s: float = 10.0) -> Verdict:
    """The AudioHook upgrade check. `headers` keys lower-case; `client_secret_b64` as Genesys shows
    it (base64). Nonces are recorded only for verified requests, so junk cannot fill the cache."""
    given_key = headers.get("x-api-key")
    if not given_key:
        return _fail("api_key_missing", "no X-API-KEY header")
    if not hmac.compare_digest(canonical_field(given_key).encode(), api_key.encode()):
        return _fail("api_key_unknown", "X-API-KEY is not the configured key")
    try:
        secret = base64.b64decode(client_secret_b64, validate=True)
    except (binascii.Error, ValueError):
        return _fail("config_error", "client secret is not base64")
    if "signature-input" not in headers and "signature" not in headers:
        # the reference server accepts unsigned upgrades only for an empty client secret
        return Verdict(True) if not secret else _fail("signature_missing", "unsigned upgrade")
    verdict, params = verify_signature(method=method, authority=authority, target=target, headers=headers,
                                       key=secret, now=now, required=AUDIOHOOK_COMPONENTS, max_age_s=max_age_s)
    if not verdict.ok:
        return verdict
    if params.get("keyid") != canonical_field(given_key):
        return _fail("signature_invalid", "keyid differs from X-API-KEY")
    nonce = params.get("nonce")
    if not isinstance(nonce, str) or len(nonce) < MIN_NONCE_CHARS:
        return _fail("signature_invalid", f"nonce missing or shorter than {MIN_NONCE_CHARS}")
    if nonces.seen(nonce, now):
        return _fail("signature_replayed", "nonce already used")
    created = params.get("created")
    assert isinstance(created, int)  # max_age_s made it required
    nonces.add(nonce, created + max_age_s + MAX_CLOCK_SKEW_S, now)
    return Verdict(True)
