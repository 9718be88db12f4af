"""Each websocket dialect's wiring: its `[ingest.<name>]` config → a `Dialect` (parser factory, upgrade
auth, subprotocols). Secrets are read here, at start, with `read_secret`; a secret a config names but
the environment lacks stops the start with a ConfigError naming the variable. Secrets never reach
logs or metadata."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from urllib.parse import unquote

from websockets.http11 import Request

from daemon.clock import Clock
from daemon.configforks import (
    AsteriskWsIngestConfig,
    AudioHookIngestConfig,
    ExotelIngestConfig,
    FreeswitchIngestConfig,
    JambonzIngestConfig,
    PlivoIngestConfig,
    TelnyxIngestConfig,
    VonageIngestConfig,
)
from daemon.configingest import IngestConfig
from daemon.configschema import ConfigError, read_secret
from daemon.ingest.forks import asterisk_ws, audiohook, exotel, freeswitch, jambonz, plivo, telnyx, vonage
from daemon.ingest.forks.audiohook_signature import NonceCache, verify_audiohook_upgrade
from daemon.ingest.forks.common import token_matches
from daemon.ingest.websocket.forkroute import Dialect, Refusal, WsForkParser

#: what Asterisk's websocket_client.conf offers (`protocols = media`, docs.asterisk.org res_websocket_client)
ASTERISK_WS_SUBPROTOCOL = "media"
_BASIC_CHALLENGE = (("WWW-Authenticate", 'Basic realm="spoofwatch"'),)


def _secret(env_name: str, where: str, environ: Mapping[str, str] | None) -> str:
    value = read_secret(env_name, environ)
    if not value:
        raise ConfigError(f"{where} names {env_name}, which is not set (environment variable or systemd credential)")
    return value


def _in_band(name: str, key: str, env_name: str, environ: Mapping[str, str] | None) -> tuple[str, str] | None:
    """(key, secret) an in-band field must carry, or None when not configured."""
    if not key and not env_name:
        return None
    if not key or not env_name:
        raise ConfigError(f"ingest.{name}: set both the secret's key and secret_env, or neither")
    return key, _secret(env_name, f"ingest.{name}.secret_env", environ)


def basic_auth_check(name: str, env_name: str, environ: Mapping[str, str] | None
                     ) -> Callable[[Request], Refusal | None]:
    """Basic credentials ("user:password" in the variable) the upgrade must carry; none configured: open."""
    if not env_name:
        return lambda _request: None
    expected = _secret(env_name, f"ingest.{name}.basic_auth_env", environ)

    def check(request: Request) -> Refusal | None:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic" or not value:
            return Refusal(401, "auth_missing", _BASIC_CHALLENGE)
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return Refusal(401, "auth_invalid", _BASIC_CHALLENGE)
        return None if token_matches(expected, given) else Refusal(401, "auth_invalid", _BASIC_CHALLENGE)

    return check


def telnyx_dialect(cfg: TelnyxIngestConfig, size: int, environ: Mapping[str, str] | None) -> Dialect:
    token = _secret(cfg.auth_token_env, "ingest.telnyx.auth_token_env", environ) if cfg.auth_token_env else None
    param = _in_band("telnyx", cfg.secret_param, cfg.secret_env, environ)

    def authorize(request: Request) -> Refusal | None:
        if token is None:
            return None
        given = request.headers.get(telnyx.AUTH_HEADER)
        if not token_matches(token, given):
            return Refusal(401, "auth_missing" if not given else "auth_invalid")
        return None

    def make(_request: Request, _tail: str) -> WsForkParser:
        return telnyx.TelnyxStreamParser(reorder_window=cfg.reorder_window, max_gap_s=cfg.max_gap_ms / 1000,
                                         expected_param=param, max_text_chars=size, max_binary_bytes=size)

    return Dialect(telnyx.INGEST, cfg.path, cfg.max_calls, make, authorize)


def plivo_dialect(cfg: PlivoIngestConfig, size: int, environ: Mapping[str, str] | None) -> Dialect:
    header = _in_band("plivo", cfg.secret_header, cfg.secret_env, environ)
    return Dialect(plivo.INGEST, cfg.path, cfg.max_calls,
                   lambda _r, _t: plivo.PlivoStreamParser(expected_header=header,
                                                                max_text_chars=size, max_binary_bytes=size))


def exotel_dialect(cfg: ExotelIngestConfig, size: int, environ: Mapping[str, str] | None) -> Dialect:
    param = _in_band("exotel", cfg.secret_param, cfg.secret_env, environ)
    return Dialect(exotel.INGEST, cfg.path, cfg.max_calls,
                   lambda _r, _t: exotel.ExotelStreamParser(expected_param=param, max_text_chars=size,
                                                                  max_binary_bytes=size),
                   basic_auth_check("exotel", cfg.basic_auth_env, environ))


def vonage_dialect(cfg: VonageIngestConfig, size: int, environ: Mapping[str, str] | None) -> Dialect:
    header = _in_band("vonage", cfg.secret_header, cfg.secret_env, environ)
    return Dialect(vonage.INGEST, cfg.path, cfg.max_calls,
                   lambda _r, tail: vonage.VonageStreamParser(fallback_call_id=unquote(tail) or None,
                                                              expected_header=header,
                                                              max_text_chars=size, max_binary_bytes=size))


def freeswitch_dialect(cfg: FreeswitchIngestConfig, size: int, environ: Mapping[str, str] | None
                       ) -> Dialect:
    key = _in_band("freeswitch", cfg.secret_key, cfg.secret_env, environ)
    mix: freeswitch.MixType = "mono" if cfg.mix_type == "mono" else "mixed" if cfg.mix_type == "mixed" else "stereo"
    return Dialect(freeswitch.INGEST, cfg.path, cfg.max_calls,
                   lambda _r, tail: freeswitch.FreeswitchForkParser(
                       mix_type=mix, sample_rate=cfg.sample_rate_hz, call_id=unquote(tail) or None,
                       expected_key=key, max_text_chars=size, max_binary_bytes=size),
                   subprotocols=(freeswitch.SUBPROTOCOL, freeswitch.LEGACY_SUBPROTOCOL),
                   compression=cfg.permessage_deflate)


def jambonz_dialect(cfg: JambonzIngestConfig, size: int, environ: Mapping[str, str] | None) -> Dialect:
    meta = _in_band("jambonz", cfg.secret_key, cfg.secret_env, environ)
    return Dialect(jambonz.INGEST, cfg.path, cfg.max_calls,
                   lambda _r, _t: jambonz.JambonzListenParser(expected_meta=meta, max_text_chars=size,
                                                                  max_binary_bytes=size),
                   basic_auth_check("jambonz", cfg.basic_auth_env, environ),
                   subprotocols=(jambonz.SUBPROTOCOL, *jambonz.ALTERNATE_SUBPROTOCOLS))


def asterisk_ws_dialect(cfg: AsteriskWsIngestConfig, size: int, environ: Mapping[str, str] | None
                        ) -> Dialect:
    var = _in_band("asterisk_ws", cfg.secret_variable, cfg.secret_env, environ)
    return Dialect(asterisk_ws.INGEST, cfg.path, cfg.max_calls,
                   lambda _r, _t: asterisk_ws.AsteriskWebsocketParser(
                       expected_variable=var, max_text_chars=size, max_binary_bytes=size),
                   basic_auth_check("asterisk_ws", cfg.basic_auth_env, environ),
                   # websocket_client.conf's `protocols = media` (docs.asterisk.org res_websocket_client example)
                   subprotocols=(ASTERISK_WS_SUBPROTOCOL,))


def audiohook_dialect(cfg: AudioHookIngestConfig, size: int, environ: Mapping[str, str] | None,
                      clock: Clock) -> Dialect:
    api_key = _secret(cfg.api_key_env, "ingest.audiohook.api_key_env", environ)
    client_secret = read_secret(cfg.client_secret_env, environ) or ""
    try:
        base64.b64decode(client_secret, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"ingest.audiohook.client_secret_env: {cfg.client_secret_env} is not base64 (give the "
                          "Client Secret exactly as Genesys shows it)") from None
    nonces = NonceCache()

    def authorize(request: Request) -> Refusal | None:
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        verdict = verify_audiohook_upgrade(method="GET", authority=headers.get("host", ""), target=request.path,
                                           headers=headers, now=clock.wall(), api_key=api_key,
                                           client_secret_b64=client_secret, nonces=nonces,
                                           max_age_s=cfg.max_signature_age_s)
        return None if verdict.ok else Refusal(401, verdict.reason)

    def make(request: Request, _tail: str) -> WsForkParser:
        return audiohook.AudioHookServerParser(session_id=request.headers.get("Audiohook-Session-Id"),
                                               organization_id=request.headers.get("Audiohook-Organization-Id"),
                                               max_binary_bytes=size)

    return Dialect(audiohook.INGEST, cfg.path, cfg.max_calls, make, authorize)


def fork_dialects(ing: IngestConfig, environ: Mapping[str, str] | None, clock: Clock) -> list[Dialect]:
    """The enabled websocket dialects of a config, wired (secrets read now)."""
    m = ing.websocket.max_frame_bytes
    out: list[Dialect] = []
    if ing.telnyx.enabled:
        out.append(telnyx_dialect(ing.telnyx, m, environ))
    if ing.plivo.enabled:
        out.append(plivo_dialect(ing.plivo, m, environ))
    if ing.exotel.enabled:
        out.append(exotel_dialect(ing.exotel, m, environ))
    if ing.vonage.enabled:
        out.append(vonage_dialect(ing.vonage, m, environ))
    if ing.freeswitch.enabled:
        out.append(freeswitch_dialect(ing.freeswitch, m, environ))
    if ing.jambonz.enabled:
        out.append(jambonz_dialect(ing.jambonz, m, environ))
    if ing.asterisk_ws.enabled:
        out.append(asterisk_ws_dialect(ing.asterisk_ws, m, environ))
    if ing.audiohook.enabled:
        out.append(audiohook_dialect(ing.audiohook, m, environ, clock))
    return out
