"""The `[ingest.<dialect>]` sections of the media forks (issue 14): every websocket dialect shares the
`[ingest.websocket]` listener and is told apart by its `path`; AudioSocket is its own TCP server.
Secrets are never in the file: each `*_env` key names an environment variable (or systemd credential)
read with `read_secret` at start. Part of the schema in daemon/configingest.py."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from daemon.configschema import ConfigError, opt, parse_hostport

_SECRET_ENV_HELP = ("environment variable (or systemd credential) with the shared secret that key must carry "
                    '("": no in-band secret checked)')
_BASIC_HELP = ('environment variable (or systemd credential) holding "user:password" the upgrade\'s Basic '
               'Authorization must carry (401 otherwise; "": not checked)')


@dataclass(frozen=True)
class ForkIngestBase:
    """Keys every websocket fork dialect has (a subclass overrides `path`'s default)."""

    enabled: bool = opt(False, "accept this dialect on [ingest.websocket] listen")
    path: str = opt("/", "websocket path the platform connects to; longer paths below it (\"<path>/<id>\") "
                    "are accepted too, the rest of the path then names the call where the dialect has no id")
    max_calls: int = opt(200, "concurrent connections of this dialect; beyond it new upgrades get HTTP 503",
                         min=1, max=100000)


@dataclass(frozen=True)
class TelnyxIngestConfig(ForkIngestBase):
    """Telnyx media streaming (Call Control `stream_url`, TeXML `<Stream>`)"""

    path: str = opt("/telnyx", "websocket path Telnyx connects to")
    auth_token_env: str = opt("", "environment variable with the streaming auth token Telnyx sends as "
                              "x-telnyx-streaming-auth-token (401 when it differs; \"\": not checked)")
    secret_param: str = opt("", "custom_parameters key that must carry the secret of secret_env (never in metadata)")
    secret_env: str = opt("", _SECRET_ENV_HELP)
    reorder_window: int = opt(8, "frames held per track to put out-of-order frames back in order (20 ms each)",
                              min=1, max=256)
    max_gap_ms: int = opt(2000, "largest lost stretch filled with silence", min=0, max=60000)


@dataclass(frozen=True)
class PlivoIngestConfig(ForkIngestBase):
    """Plivo `<Stream>` audio streaming (Plivo signs nothing on the upgrade: use a secret)"""

    path: str = opt("/plivo", "websocket path Plivo connects to")
    secret_header: str = opt("", "extraHeaders key that must carry the secret of secret_env (never in metadata)")
    secret_env: str = opt("", _SECRET_ENV_HELP)


@dataclass(frozen=True)
class ExotelIngestConfig(ForkIngestBase):
    """Exotel AgentStream (Stream / Voicebot applets, ExoML `<StartStream>`)"""

    path: str = opt("/exotel", "websocket path Exotel connects to")
    basic_auth_env: str = opt("", _BASIC_HELP + ' (Exotel sends wss://API_KEY:API_TOKEN@host/… as Basic auth)')
    secret_param: str = opt("", "custom_parameters key that must carry the secret of secret_env (never in metadata)")
    secret_env: str = opt("", _SECRET_ENV_HELP)


@dataclass(frozen=True)
class VonageIngestConfig(ForkIngestBase):
    """Vonage Voice API websockets (NCCO `connect` endpoint of type websocket); one leg, `mixed`"""

    path: str = opt("/vonage", "websocket path of the NCCO endpoint uri")
    secret_header: str = opt("", "NCCO headers key that must carry the secret of secret_env (never in metadata)")
    secret_env: str = opt("", _SECRET_ENV_HELP)


@dataclass(frozen=True)
class FreeswitchIngestConfig(ForkIngestBase):
    """FreeSWITCH mod_audio_fork / mod_audio_stream (subprotocol audio.drachtio.org selected when offered)"""

    path: str = opt("/freeswitch", "websocket path of uuid_audio_fork's URL (\"<path>/<uuid>\" names the call "
                    "when the metadata does not)")
    mix_type: str = opt("stereo", "the mix-type argument of uuid_audio_fork (not sent in-band): mono (caller "
                        "only), mixed (one leg), stereo (caller + callee legs)", choices=("mono", "mixed", "stereo"))
    sample_rate_hz: int = opt(8000, "the sampling-rate argument of uuid_audio_fork (8k = 8000, 16k = 16000; "
                              "also 24000, 32000, 48000)", min=8000, max=48000)
    permessage_deflate: bool = opt(False, "offer per-message deflate to FreeSWITCH (costs a compression context "
                                   "per call; only this dialect may use it)")
    secret_key: str = opt("", "metadata key that must carry the secret of secret_env (never in metadata)")
    secret_env: str = opt("", _SECRET_ENV_HELP)


@dataclass(frozen=True)
class JambonzIngestConfig(ForkIngestBase):
    """jambonz `listen` verb (subprotocol audio.jambonz.org selected when offered)"""

    path: str = opt("/jambonz", "websocket path of the listen verb's url")
    basic_auth_env: str = opt("", _BASIC_HELP + " (the verb's wsAuth)")
    secret_key: str = opt("", "listen verb metadata key that must carry the secret of secret_env (never in "
                          "metadata)")
    secret_env: str = opt("", _SECRET_ENV_HELP)


@dataclass(frozen=True)
class AsteriskWsIngestConfig(ForkIngestBase):
    """Asterisk chan_websocket (ARI externalMedia transport=websocket); one leg, `channel`"""

    path: str = opt("/asterisk", "websocket path of the websocket_client.conf uri")
    basic_auth_env: str = opt("", _BASIC_HELP + " (websocket_client.conf username/password)")
    secret_variable: str = opt("", "channel variable that must carry the secret of secret_env (never in metadata)")
    secret_env: str = opt("", _SECRET_ENV_HELP)


@dataclass(frozen=True)
class AudioHookIngestConfig(ForkIngestBase):
    """Genesys Cloud AudioHook Monitor (X-API-KEY + RFC 9421 signature checked before the upgrade)"""

    path: str = opt("/audiohook", "websocket path of the integration's Connection URI")
    api_key_env: str = opt("SPOOFWATCH_AUDIOHOOK_API_KEY", "environment variable with the integration's API Key "
                           "(X-API-KEY must equal it; enabled without it, the daemon does not start)")
    client_secret_env: str = opt("SPOOFWATCH_AUDIOHOOK_CLIENT_SECRET", "environment variable with the "
                                 "integration's Client Secret (base64, as Genesys shows it); unset or empty: "
                                 "unsigned upgrades are accepted, as the Genesys reference server does")
    max_signature_age_s: float = opt(10.0, "oldest signature `created` accepted (3 s of clock skew on top)",
                                     min=1.0, max=300.0)


@dataclass(frozen=True)
class AudioSocketIngestConfig:
    """Asterisk AudioSocket over TCP; the protocol has no authentication: bind to a private address"""

    enabled: bool = opt(False, "accept Asterisk AudioSocket connections")
    listen: str = opt("127.0.0.1:9092", "HOST:PORT of the AudioSocket TCP server (port 0: any free port)")
    max_calls: int = opt(200, "concurrent AudioSocket connections; beyond it a new one is closed at once",
                         min=1, max=100000)
    max_payload_bytes: int = opt(16384, "largest frame payload accepted; a frame declaring more closes the "
                                 "connection (drop reason oversize_frame)", min=320, max=65535)
    rate_0x10_hz: int = opt(8000, "sample rate of kind 0x10 frames: 8000, or the channel's real rate for "
                            "Asterisk builds that label every slin frame 0x10", min=8000, max=192000)


_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def fork_checks(ws_listen: str, twilio_path: str, forks: Sequence[ForkIngestBase],
                audiosocket: AudioSocketIngestConfig, *, http_listen: str) -> None:
    """Each dialect's path is a plain path, and no two enabled websocket dialects share one."""
    names = ("telnyx", "plivo", "exotel", "vonage", "freeswitch", "jambonz", "asterisk_ws", "audiohook")
    taken: dict[str, str] = {twilio_path: "ingest.twilio.path"} if twilio_path else {}
    for name, fork in zip(names, forks, strict=True):
        where = f"ingest.{name}.path"
        if not _PATH.fullmatch(fork.path):
            raise ConfigError(f'{where}: must be a path like "/{name}" (no trailing "/", query or spaces), '
                              f"got {fork.path!r}")
        if not fork.enabled:
            continue
        for path, other in taken.items():
            if fork.path == path or fork.path.startswith(path + "/") or path.startswith(fork.path + "/"):
                raise ConfigError(f"{where}: {fork.path!r} overlaps {other} {path!r}: give each dialect its own path")
        taken[fork.path] = where
    freeswitch = next(f for f in forks if isinstance(f, FreeswitchIngestConfig))
    if freeswitch.sample_rate_hz not in (8000, 16000, 24000, 32000, 48000):
        raise ConfigError("ingest.freeswitch.sample_rate_hz: must be one of 8000, 16000, 24000, 32000, 48000")
    try:
        parse_hostport(audiosocket.listen)
    except ValueError as exc:
        raise ConfigError(f"ingest.audiosocket.listen: {exc}") from None
    if audiosocket.enabled and not audiosocket.listen.endswith(":0"):
        for where, other in (("ingest.websocket.listen", ws_listen), ("http.listen", http_listen)):
            if other == audiosocket.listen:
                raise ConfigError(f"ingest.audiosocket.listen: {audiosocket.listen} is also {where}")
