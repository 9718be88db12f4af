"""The `[ingest.*]` sections of config.toml: one frozen dataclass per ingest, and the checks that span
its keys. Part of the schema in daemon/config.py (which re-exports these); nothing here imports an
ingest's code."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from daemon.configschema import ConfigError, _meta, opt, parse_hostport


@dataclass(frozen=True)
class TwilioIngestConfig:
    enabled: bool = opt(True, "accept Twilio Media Streams (and SignalWire's compatible streams)")
    listen: str = opt("127.0.0.1:8080", "HOST:PORT of the websocket server (port 0: any free port)")
    path: str = opt("/twilio", "websocket path Twilio connects to")
    max_calls: int = opt(300, "concurrent Twilio streams; beyond it new upgrades get HTTP 503. Default: the "
                         "measured knee of one process on a 2-core VM, see benchmarks/README.md", min=1,
                         max=100000)
    max_frame_bytes: int = opt(65536, "largest websocket message accepted", min=1024, max=16 * 1048576)
    validate_signature: bool = opt(True, "check X-Twilio-Signature on the upgrade request (403 when bad or "
                                   "missing); on, the daemon does not start without the auth token")
    auth_token_env: str = opt("TWILIO_AUTH_TOKEN", "environment variable (or systemd credential) with the Twilio "
                              'auth token; `make run` sets the local development token "local-dev-twilio-token"')
    public_base_url: str = opt("", 'wss:// base URL Twilio dials when behind a proxy, e.g. '
                               '"wss://voice.example.com" ("": use the Host header)')
    gap_fill_max_ms: int = opt(2000, "largest Twilio-lost gap filled with silence", min=0, max=60000)


@dataclass(frozen=True)
class RtpIngestConfig:
    enabled: bool = opt(False, "accept raw RTP media forks")
    listen_host: str = opt("127.0.0.1", "address the RTP ports bind to")
    port_min: int = opt(20000, "first RTP port (even); keep the range out of the kernel's ephemeral range "
                        "(net.ipv4.ip_local_port_range, 32768-60999 on Linux), where outgoing connections take "
                        "ports at random", min=1024, max=65534)
    port_max: int = opt(20999, "last RTP port (ports that are taken at start are skipped, logged and counted)",
                        min=1025, max=65535)
    auto_calls: bool = opt(False, "a packet on an unallocated port opens a call keyed by (port, SSRC): anyone who "
                           "can reach the ports then opens upstream streams, so keep it off unless the ports are "
                           "firewalled to the PBX (the control API is the way to allocate ports)")
    inactivity_timeout_ms: int = opt(3000, "a leg without packets for this long ends", min=100, max=600000)
    jitter_window_packets: int = opt(16, "reordering window of the jitter buffer", min=1, max=1024)
    batch_ms: int = opt(100, "tick: start of playout, gap fill, idle legs, and batched decoding of codecs other than "
                        "G.711 (G.711 goes to its leg as packets arrive)", min=20, max=1000)
    recv_buffer_bytes: int = opt(4 * 1048576, "SO_RCVBUF asked for each RTP socket; the kernel caps it at "
                                 "net.core.rmem_max (the effective size is logged at start, with the sysctl to "
                                 "raise when it is smaller)", min=65536, max=256 * 1048576)
    control_listen: str = opt("127.0.0.1:9109", "HOST:PORT of the RTP session control API")
    control_token_env: str = opt("SPOOFWATCH_RTP_TOKEN", "environment variable with the control API bearer token")
    max_calls: int = opt(500, "concurrent RTP calls. Default: the measured knee of one process on a 2-core VM, "
                         "see benchmarks/README.md", min=1, max=100000)
    dynamic_payload_types: list[str] = field(
        default_factory=lambda: ["96 opus/48000/2", "111 opus/48000/2", "118 L16/16000"],
        metadata=_meta('default map of dynamic payload types ("PT name/rate[/channels]"); the control API can '
                       "give each session its own (from the SDP's a=rtpmap lines)"))
    datagram_max_bytes: int = opt(2048, "bytes asked of each recvfrom (0: asyncio's stock 256 KiB, measurably "
                                  "slower per packet)", min=0, max=262144)


@dataclass(frozen=True)
class WhipIngestConfig:
    """WebRTC publishers over WHIP (RFC 9725); enabled without a token set, the daemon refuses to start"""

    # On by default on loopback so `make run` (which exports a local development token) and the operator
    # page's "Try it" work out of the box; a deployment sets its own token or `enabled = false`.

    enabled: bool = opt(True, "accept WebRTC publishers (browsers, OBS, aiortc) over WHIP; needs the bearer "
                        "token in the variable named by token_env")
    listen: str = opt("127.0.0.1:8081", "HOST:PORT of the WHIP HTTP endpoint (port 0: any free port); the media "
                      "itself uses ICE on ephemeral UDP ports of the host's non-loopback addresses")
    path: str = opt("/whip", "endpoint path publishers POST their SDP offer to; sessions live under it")
    token_env: str = opt("SPOOFWATCH_WHIP_TOKEN", "environment variable (or systemd credential) with the bearer "
                         "token publishers send")
    max_calls: int = opt(50, "concurrent WHIP sessions; beyond it a POST gets 503 with Retry-After (each "
                         "costs ICE, DTLS-SRTP and an Opus decoder thread: ~3 % of a core measured, simulator "
                         "included)", min=1, max=10000)
    inactivity_timeout_ms: int = opt(5000, "a session without an audio frame for this long ends (a publisher "
                                     "that vanished without DELETE); also bounds ICE/DTLS setup", min=200,
                                     max=600000)
    cors_allow_origin: str = opt("*", 'Access-Control-Allow-Origin for browser publishers ("*": any page that '
                                 'has the token, e.g. the operator page on [http] listen; or one origin such as '
                                 '"https://ops.example.com")')
    stun_server: str = opt("", '"host:port" of a STUN server, for a server-reflexive ICE candidate when the '
                           'daemon is behind NAT ("": host candidates only; nothing is contacted)')


@dataclass(frozen=True)
class IngestConfig:
    twilio: TwilioIngestConfig = field(default_factory=TwilioIngestConfig)
    rtp: RtpIngestConfig = field(default_factory=RtpIngestConfig)
    whip: WhipIngestConfig = field(default_factory=WhipIngestConfig)


def _hostport(value: str, where: str) -> None:
    try:
        parse_hostport(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def ingest_checks(ingest: IngestConfig, *, http_listen: str) -> None:
    """Checks across the keys of the ingest sections; raises ConfigError naming the key."""
    _hostport(ingest.twilio.listen, "ingest.twilio.listen")
    _hostport(ingest.rtp.control_listen, "ingest.rtp.control_listen")
    if not ingest.twilio.path.startswith("/"):
        raise ConfigError("ingest.twilio.path: must start with '/'")
    if ingest.twilio.public_base_url and not ingest.twilio.public_base_url.startswith(("wss://", "ws://")):
        raise ConfigError("ingest.twilio.public_base_url: must start with wss:// (or ws://)")
    if ingest.rtp.port_max <= ingest.rtp.port_min:
        raise ConfigError("ingest.rtp.port_max: must be greater than ingest.rtp.port_min")
    from daemon.audio.codecmap import CodecMapError, parse_map

    try:
        parse_map(ingest.rtp.dynamic_payload_types)
    except CodecMapError as exc:
        raise ConfigError(f"ingest.rtp.dynamic_payload_types: {exc}") from None
    _whip_checks(ingest, http_listen)


def _whip_checks(ingest: IngestConfig, http_listen: str) -> None:
    whip = ingest.whip
    _hostport(whip.listen, "ingest.whip.listen")
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", whip.path):
        raise ConfigError(f"ingest.whip.path: must be a path like \"/whip\" (no trailing '/', query or spaces), "
                          f"got {whip.path!r}")
    if whip.cors_allow_origin != "*" and not re.fullmatch(r"https?://[^/\s?#]+", whip.cors_allow_origin):
        raise ConfigError('ingest.whip.cors_allow_origin: must be "*" or an origin like "https://ops.example.com" '
                          f"(no path), got {whip.cors_allow_origin!r}")
    if whip.stun_server:
        try:
            parse_hostport(whip.stun_server, allow_port_zero=False)
        except ValueError as exc:
            raise ConfigError(f'ingest.whip.stun_server: must be "" or "host:port": {exc}') from None
    if whip.enabled:
        taken = {"ingest.twilio.listen": ingest.twilio.listen if ingest.twilio.enabled else "",
                 "http.listen": http_listen}
        for where, other in taken.items():
            if other and other == whip.listen and not other.endswith(":0"):
                raise ConfigError(f"ingest.whip.listen: {whip.listen} is also {where}: give WHIP its own port")
