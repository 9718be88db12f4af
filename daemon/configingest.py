"""The `[ingest.*]` sections of config.toml: one frozen dataclass per ingest, and the checks that span
its keys. Part of the schema in daemon/config.py (which re-exports these); nothing here imports an
ingest's code."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from daemon.configforks import (
    AsteriskWsIngestConfig,
    AudioHookIngestConfig,
    AudioSocketIngestConfig,
    ExotelIngestConfig,
    FreeswitchIngestConfig,
    JambonzIngestConfig,
    PlivoIngestConfig,
    TelnyxIngestConfig,
    VonageIngestConfig,
    fork_checks,
)
from daemon.configschema import ConfigError, _meta, opt, parse_hostport


@dataclass(frozen=True)
class WebsocketIngestConfig:
    """One listener for every websocket dialect (Twilio and the forks), each on its own path"""

    listen: str = opt("127.0.0.1:8080", "HOST:PORT of the shared websocket server (port 0: any free port)")
    max_frame_bytes: int = opt(65536, "largest websocket message accepted on any path (a bigger one closes "
                               "that socket with 1009)", min=1024, max=16 * 1048576)


@dataclass(frozen=True)
class TwilioIngestConfig:
    #: keys that moved out of this section: refused with where they went
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "listen": "moved to [ingest.websocket] listen (one listener serves every websocket dialect)",
        "max_frame_bytes": "moved to [ingest.websocket] max_frame_bytes",
    }

    enabled: bool = opt(True, "accept Twilio Media Streams (and SignalWire's compatible streams)")
    path: str = opt("/twilio", "websocket path Twilio connects to (on [ingest.websocket] listen)")
    max_calls: int = opt(300, "concurrent Twilio streams; beyond it new upgrades get HTTP 503. Default: just "
                         "under where one process saturates its core on a 2-core VM (~370; knee 200), see "
                         "benchmarks/README.md", min=1, max=100000)
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
    max_calls: int = opt(500, "concurrent RTP calls. Default: about where one process saturates its core on a "
                         "2-core VM (~470; knee 250-400), see benchmarks/README.md", min=1, max=100000)
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
                         "costs ICE, DTLS-SRTP and Opus decoding: ~1 % of a core measured, knee 50-100 per "
                         "core, benchmarks/README.md)", min=1, max=10000)
    inactivity_timeout_ms: int = opt(5000, "a session without an audio frame for this long ends (a publisher "
                                     "that vanished without DELETE); also bounds ICE/DTLS setup", min=200,
                                     max=600000)
    cors_allow_origin: str = opt("*", 'Access-Control-Allow-Origin for browser publishers ("*": any page that '
                                 'has the token, e.g. the operator page on [http] listen; or one origin such as '
                                 '"https://ops.example.com")')
    stun_server: str = opt("", '"host:port" of a STUN server, for a server-reflexive ICE candidate when the '
                           'daemon is behind NAT ("": host candidates only; nothing is contacted)')


@dataclass(frozen=True)
class SiprecIngestConfig:
    """SIPREC recording server (RFC 7866) for SBC/PBX recording sessions; media uses the [ingest.rtp] ports"""

    enabled: bool = opt(False, "answer SIPREC recording sessions (INVITE with Require: siprec); needs [ingest.rtp]")
    listen_udp: str = opt("127.0.0.1:5060", 'HOST:PORT of the SIP UDP listener ("": none; port 0: any free port)')
    listen_tcp: str = opt("127.0.0.1:5060", 'HOST:PORT of the SIP TCP listener ("": none; port 0: any free port)')
    listen_tls: str = opt("", 'HOST:PORT of the SIP-over-TLS listener ("": none), e.g. "0.0.0.0:5061"; needs '
                          "tls_cert_path and tls_key_path (the media stays plain RTP)")
    tls_cert_path: str = opt("", "PEM certificate chain of the TLS listener")
    tls_key_path: str = opt("", "PEM private key of the TLS listener (a file readable by the daemon only)")
    advertised_host: str = opt("", 'address put in our Contact and SDP answer ("": [ingest.rtp] listen_host); '
                               "set it when the daemon is reached through NAT")
    max_calls: int = opt(100, "concurrent recording sessions; beyond it an INVITE gets 503 with Retry-After",
                         min=1, max=100000)
    allowed_networks: list[str] = field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        metadata=_meta("CIDR networks SIP requests are taken from (the SBCs/PBXs that record); others get 403"))
    session_timeout_s: float = opt(300.0, "a session with neither SIP requests nor RTP for this long ends (an SRC "
                                   "that vanished without BYE); its ports are freed", min=5, max=86400)
    t1_ms: int = opt(500, "RFC 3261 timer T1: our 200 OK is retransmitted over UDP at T1, 2·T1, … (capped at 4 s) "
                     "until the ACK; Timer H gives up after 64·T1", min=100, max=5000)


@dataclass(frozen=True)
class IngestConfig:
    websocket: WebsocketIngestConfig = field(default_factory=WebsocketIngestConfig)
    twilio: TwilioIngestConfig = field(default_factory=TwilioIngestConfig)
    rtp: RtpIngestConfig = field(default_factory=RtpIngestConfig)
    whip: WhipIngestConfig = field(default_factory=WhipIngestConfig)
    telnyx: TelnyxIngestConfig = field(default_factory=TelnyxIngestConfig)
    plivo: PlivoIngestConfig = field(default_factory=PlivoIngestConfig)
    exotel: ExotelIngestConfig = field(default_factory=ExotelIngestConfig)
    vonage: VonageIngestConfig = field(default_factory=VonageIngestConfig)
    freeswitch: FreeswitchIngestConfig = field(default_factory=FreeswitchIngestConfig)
    jambonz: JambonzIngestConfig = field(default_factory=JambonzIngestConfig)
    asterisk_ws: AsteriskWsIngestConfig = field(default_factory=AsteriskWsIngestConfig)
    audiohook: AudioHookIngestConfig = field(default_factory=AudioHookIngestConfig)
    audiosocket: AudioSocketIngestConfig = field(default_factory=AudioSocketIngestConfig)
    siprec: SiprecIngestConfig = field(default_factory=SiprecIngestConfig)


#: every websocket fork dialect (its `[ingest.<name>]` section and the `ingest` label of its metrics)
WEBSOCKET_FORKS = ("telnyx", "plivo", "exotel", "vonage", "freeswitch", "jambonz", "asterisk_ws", "audiohook")


def websocket_enabled(ingest: IngestConfig) -> bool:
    """Whether the shared websocket listener runs: Twilio or any websocket fork dialect is enabled."""
    return ingest.twilio.enabled or any(getattr(ingest, name).enabled for name in WEBSOCKET_FORKS)


def _hostport(value: str, where: str) -> None:
    try:
        parse_hostport(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def ingest_checks(ingest: IngestConfig, *, http_listen: str) -> None:
    """Checks across the keys of the ingest sections; raises ConfigError naming the key."""
    _hostport(ingest.websocket.listen, "ingest.websocket.listen")
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
    _siprec_checks(ingest)
    fork_checks(ingest.websocket.listen, ingest.twilio.path if ingest.twilio.enabled else "",
                (ingest.telnyx, ingest.plivo, ingest.exotel, ingest.vonage, ingest.freeswitch, ingest.jambonz,
                 ingest.asterisk_ws, ingest.audiohook), ingest.audiosocket, http_listen=http_listen)


def _siprec_checks(ingest: IngestConfig) -> None:
    import ipaddress

    sip = ingest.siprec
    for key in ("listen_udp", "listen_tcp"):
        if getattr(sip, key):
            _hostport(getattr(sip, key), f"ingest.siprec.{key}")
    for net in sip.allowed_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f'ingest.siprec.allowed_networks: {net!r} is not a CIDR network like "10.0.0.0/8"') \
                from None
    if sip.listen_tls:
        _hostport(sip.listen_tls, "ingest.siprec.listen_tls")
        if not (sip.tls_cert_path and sip.tls_key_path):
            raise ConfigError("ingest.siprec.listen_tls: set tls_cert_path and tls_key_path too")
    if sip.enabled and not (sip.listen_udp or sip.listen_tcp or sip.listen_tls):
        raise ConfigError("ingest.siprec: enabled, but listen_udp, listen_tcp and listen_tls are all empty")
    if sip.enabled and not ingest.rtp.enabled:
        raise ConfigError("ingest.siprec: enabled, but its media goes through the RTP ingest: set [ingest.rtp] "
                          "enabled = true (and open its port range to the recording client)")


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
        taken = {"ingest.websocket.listen": ingest.websocket.listen,
                 "http.listen": http_listen}
        for where, other in taken.items():
            if other and other == whip.listen and not other.endswith(":0"):
                raise ConfigError(f"ingest.whip.listen: {whip.listen} is also {where}: give WHIP its own port")
