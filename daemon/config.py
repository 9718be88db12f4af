"""config.toml → frozen dataclasses, validated.

Every key has its unit in its name (`_ms`, `_s`, `_bytes`). An unknown key, a wrong type or an
out-of-range value is refused with one message naming the file, the key and what is allowed.
Secrets never live in the file: they come from environment variables (or systemd credentials)
named by `*_env` keys.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.configschema import (
    ConfigError,
    _build,
    _meta,
    opt,
    parse_hostport,
    read_secret,
)
from daemon.configschema import iter_documented_keys as _iter_keys

__all__ = ["ConfigError", "opt", "parse_hostport", "read_secret"]

#: Environment variables holding the Behavioral Signals project id and API key.
CID_ENV = "SPOOFWATCH_CID"
API_KEY_ENV = "SPOOFWATCH_API_KEY"


@dataclass(frozen=True)
class DaemonConfig:
    log_format: str = opt("auto", "log line format: auto (json under systemd, text on a terminal), json, text",
                          choices=("auto", "json", "text"))
    log_level: str = opt("info", "log level", choices=("debug", "info", "warning", "error"))
    drain_timeout_s: float = opt(20.0, "on SIGTERM, how long open calls may finish before they are cut",
                                 min=0, max=3600)
    max_calls: int = opt(2000, "concurrent calls over all ingests; beyond it new calls are refused",
                         min=1, max=100000)
    leg_queue_chunks: int = opt(40, "per-leg bounded queue of 250 ms chunks awaiting upstream (drop-oldest)",
                                min=2, max=10000)
    replay_buffer_chunks: int = opt(40, "per-leg chunks kept to replay after an upstream reconnect",
                                    min=0, max=10000)
    final_results_timeout_s: float = opt(10.0, "at leg end, how long to wait for upstream's last results",
                                         min=0, max=600)


@dataclass(frozen=True)
class HttpConfig:
    listen: str = opt("127.0.0.1:9108", "HOST:PORT of /metrics, /healthz, /readyz (port 0: any free port)")


@dataclass(frozen=True)
class UpstreamConfig:
    target: str = opt("embedded", '"embedded" (simulator inside the daemon on loopback) or "host:port" '
                      'of the BehavioralStreamingApi, e.g. "streaming.behavioralsignals.com:443"')
    tls: bool = opt(False, "use TLS to the target (true for streaming.behavioralsignals.com:443)")
    channels: int = opt(2, "grpc.aio channels (separate HTTP/2 connections) in the pool", min=1, max=64)
    max_streams_per_channel: int = opt(100, "streams one channel carries before the pool prefers another",
                                       min=1, max=10000)
    connect_timeout_s: float = opt(5.0, "how long a new stream may take to connect", min=0.1, max=300)
    keepalive_s: float = opt(20.0, "HTTP/2 keepalive ping interval on every channel", min=1, max=3600)
    stall_timeout_s: float = opt(30.0, "a stream that read nothing for this long while audio flowed is reopened",
                                 min=1, max=3600)
    retry_initial_ms: int = opt(250, "first reconnect backoff", min=1, max=600000)
    retry_max_ms: int = opt(10000, "largest reconnect backoff", min=1, max=3600000)
    breaker_failures: int = opt(5, "consecutive failures that open a channel's circuit breaker", min=1, max=1000)
    breaker_open_s: float = opt(5.0, "how long an open breaker refuses before a trial", min=0.1, max=3600)
    result_level: str = opt("all", "AudioConfig.level asked for: all, segment, utterance",
                            choices=("all", "segment", "utterance"))


@dataclass(frozen=True)
class SimulatorConfig:
    """The embedded upstream simulator (test double with a marker-tone rule, not a detector)."""

    listen: str = opt("127.0.0.1:0", "HOST:PORT of the embedded simulator (port 0: any free port)")
    vad_threshold_dbfs: float = opt(-45.0, "frames of 20 ms above this RMS level count as voiced", min=-120, max=0)
    utterance_end_silence_ms: int = opt(600, "silence that ends an utterance", min=20, max=60000)
    segment_s: float = opt(2.0, "voiced audio per segment result", min=0.25, max=60)
    spoof_threshold: float = opt(0.5, "spoofed posterior at or above which final_label is spoofed",
                                 min=0, max=1)
    max_message_bytes: int = opt(1048576, "largest audio_content accepted", min=2, max=64 * 1048576)
    result_latency_ms: int = opt(0, "fault: delay added before each result", min=0, max=600000)
    unavailable_after_s: float = opt(0.0, "fault: end each stream with UNAVAILABLE after this long (0: never)",
                                     min=0, max=86400)
    refuse_new_streams: bool = opt(False, "fault: answer every new stream with UNAVAILABLE")
    drop_results_ratio: float = opt(0.0, "fault: share of results silently dropped", min=0, max=1)
    close_connection_after_s: float = opt(0.0, "fault: abort the stream's connection after this long (0: never)",
                                          min=0, max=86400)


@dataclass(frozen=True)
class TwilioIngestConfig:
    enabled: bool = opt(True, "accept Twilio Media Streams (and SignalWire's compatible streams)")
    listen: str = opt("127.0.0.1:8080", "HOST:PORT of the websocket server (port 0: any free port)")
    path: str = opt("/twilio", "websocket path Twilio connects to")
    max_calls: int = opt(1000, "concurrent Twilio streams; beyond it new ones are closed with 1013", min=1,
                         max=100000)
    max_frame_bytes: int = opt(65536, "largest websocket message accepted", min=1024, max=16 * 1048576)
    validate_signature: bool = opt(False, "check X-Twilio-Signature on the upgrade request")
    auth_token_env: str = opt("TWILIO_AUTH_TOKEN", "environment variable with the Twilio auth token")
    public_base_url: str = opt("", 'wss:// base URL Twilio dials when behind a proxy, e.g. '
                               '"wss://voice.example.com" ("": use the Host header)')
    gap_fill_max_ms: int = opt(2000, "largest Twilio-lost gap filled with silence", min=0, max=60000)


@dataclass(frozen=True)
class RtpIngestConfig:
    enabled: bool = opt(False, "accept raw RTP media forks")
    listen_host: str = opt("127.0.0.1", "address the RTP ports bind to")
    port_min: int = opt(40000, "first RTP port (even)", min=1024, max=65534)
    port_max: int = opt(40999, "last RTP port", min=1025, max=65535)
    auto_calls: bool = opt(True, "a packet on an unallocated port opens a call keyed by (port, SSRC)")
    inactivity_timeout_ms: int = opt(3000, "a leg without packets for this long ends", min=100, max=600000)
    jitter_window_packets: int = opt(16, "reordering window of the jitter buffer", min=1, max=1024)
    batch_ms: int = opt(100, "tick: start of playout, gap fill, idle legs, and batched decoding of codecs other than "
                        "G.711 (G.711 goes to its leg as packets arrive)", min=20, max=1000)
    recv_buffer_bytes: int = opt(4 * 1048576, "SO_RCVBUF of each RTP socket", min=65536, max=256 * 1048576)
    control_listen: str = opt("127.0.0.1:9109", "HOST:PORT of the RTP session control API")
    control_token_env: str = opt("SPOOFWATCH_RTP_TOKEN", "environment variable with the control API bearer token")
    max_calls: int = opt(1000, "concurrent RTP calls", min=1, max=100000)
    dynamic_payload_types: list[str] = field(
        default_factory=lambda: ["96 opus/48000/2", "111 opus/48000/2", "118 L16/16000"],
        metadata=_meta('default map of dynamic payload types ("PT name/rate[/channels]"); the control API can '
                       "give each session its own (from the SDP's a=rtpmap lines)"))
    datagram_max_bytes: int = opt(2048, "bytes asked of each recvfrom (0: asyncio's stock 256 KiB, measurably "
                                  "slower per packet)", min=0, max=262144)


@dataclass(frozen=True)
class IngestConfig:
    twilio: TwilioIngestConfig = field(default_factory=TwilioIngestConfig)
    rtp: RtpIngestConfig = field(default_factory=RtpIngestConfig)


@dataclass(frozen=True)
class PolicyConfig:
    spoofed_threshold: float = opt(0.9, "spoofed posterior at or above which a result counts as spoofed",
                                   min=0, max=1)
    consecutive_segments: int = opt(2, "consecutive spoofed segment results that raise an alert", min=1,
                                    max=1000)
    utterance_alerts_immediately: bool = opt(True, "a spoofed utterance result above threshold alerts at once")
    alert_updates: bool = opt(False, "send call.spoof_detected again when later evidence is stronger")


@dataclass(frozen=True)
class OutboxConfig:
    path: str = opt("spoofwatch-outbox.sqlite3", "SQLite outbox file (relative: to the working or state directory)")
    synchronous: str = opt("full", 'SQLite sync mode: "full" fsyncs every (group) commit and survives power loss; '
                           '"normal" survives a crash or kill -9 of the daemon but may lose the last events on power '
                           "loss or a kernel crash, and spares slow disks an fsync per commit",
                           choices=("full", "normal"))
    delivered_retention_s: float = opt(7 * 86400.0, "delivered events kept this long, then purged",
                                       min=0, max=366 * 86400)
    max_attempts: int = opt(12, "delivery attempts before an event is dead-lettered", min=1, max=1000)
    retry_schedule_s: list[float] = field(
        default_factory=lambda: [5.0, 30.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0,
                                 86400.0],
        metadata=_meta("delay before retry n (±20 % jitter; the last repeats; Retry-After is honoured): about 2 days "
                       "in all by default"))


@dataclass(frozen=True)
class WebhookConfig:
    url: str = opt("", "http(s) URL the events are POSTed to")
    secret_env: str = opt("SPOOFWATCH_WEBHOOK_SECRET", "environment variable with the whsec_… secret "
                          "(several, space-separated, during key rotation: all are used to sign)")
    events: list[str] = field(default_factory=list, metadata=_meta("event types sent to this endpoint ([]: all)"))
    timeout_s: float = opt(15.0, "request timeout", min=0.1, max=300)


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    webhook: list[WebhookConfig] = field(default_factory=list)
    source: str = field(default="<defaults>", metadata={"internal": True})


EVENT_TYPES = ("call.spoof_detected", "call.summary", "upstream.degraded", "upstream.recovered")


def _cross_checks(cfg: Config) -> None:
    from urllib.parse import urlsplit

    def hostport(value: str, where: str) -> None:
        try:
            parse_hostport(value)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    hostport(cfg.http.listen, "http.listen")
    hostport(cfg.simulator.listen, "simulator.listen")
    hostport(cfg.ingest.twilio.listen, "ingest.twilio.listen")
    hostport(cfg.ingest.rtp.control_listen, "ingest.rtp.control_listen")
    if cfg.upstream.target != "embedded":
        try:
            parse_hostport(cfg.upstream.target, allow_port_zero=False)
        except ValueError as exc:
            raise ConfigError(f'upstream.target: must be "embedded" or "host:port": {exc}') from None
    if not cfg.ingest.twilio.path.startswith("/"):
        raise ConfigError("ingest.twilio.path: must start with '/'")
    if cfg.ingest.twilio.public_base_url and not cfg.ingest.twilio.public_base_url.startswith(("wss://", "ws://")):
        raise ConfigError("ingest.twilio.public_base_url: must start with wss:// (or ws://)")
    if cfg.ingest.rtp.port_max <= cfg.ingest.rtp.port_min:
        raise ConfigError("ingest.rtp.port_max: must be greater than ingest.rtp.port_min")
    from daemon.ingest.rtp.codecmap import CodecMapError, parse_map

    try:
        parse_map(cfg.ingest.rtp.dynamic_payload_types)
    except CodecMapError as exc:
        raise ConfigError(f"ingest.rtp.dynamic_payload_types: {exc}") from None
    if cfg.upstream.retry_max_ms < cfg.upstream.retry_initial_ms:
        raise ConfigError("upstream.retry_max_ms: must be at least upstream.retry_initial_ms")
    if not cfg.outbox.retry_schedule_s or any(not 0 < d <= 7 * 86400 for d in cfg.outbox.retry_schedule_s):
        raise ConfigError("outbox.retry_schedule_s: must be a non-empty list of delays between 0 and 604800 s")
    for i, hook in enumerate(cfg.webhook):
        where = f"webhook[{i}]"
        parts = urlsplit(hook.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{where}.url: must be an http:// or https:// URL, got {hook.url!r}")
        if not hook.secret_env:
            raise ConfigError(f"{where}.secret_env: must name an environment variable")
        for ev in hook.events:
            if ev not in EVENT_TYPES:
                raise ConfigError(f"{where}.events: unknown event type {ev!r} (allowed: {', '.join(EVENT_TYPES)})")


def parse_config(data: Mapping[str, Any], source: str = "<memory>") -> Config:
    try:
        cfg: Config = _build(Config, data, "")
        _cross_checks(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return dataclasses.replace(cfg, source=source)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a config file; None gives the built-in defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, str(p))


@dataclass(frozen=True)
class UpstreamCredentials:
    cid: int
    api_key: str


def upstream_credentials(environ: Mapping[str, str] | None = None) -> UpstreamCredentials:
    """The Behavioral Signals project id and API key, from SPOOFWATCH_CID / SPOOFWATCH_API_KEY."""
    cid_s = read_secret(CID_ENV, environ)
    key = read_secret(API_KEY_ENV, environ)
    if not cid_s or not key:
        missing = [n for n, v in ((CID_ENV, cid_s), (API_KEY_ENV, key)) if not v]
        raise ConfigError(f"set {' and '.join(missing)} (the Behavioral Signals project id and API key)")
    try:
        cid = int(cid_s)
    except ValueError:
        raise ConfigError(f"{CID_ENV} must be an integer project id, got {cid_s!r}") from None
    return UpstreamCredentials(cid, key)


def iter_documented_keys(cls: type[Any] = Config, prefix: str = "") -> typing.Iterator[tuple[str, str]]:
    """(dotted key, help) for every key: used to check config.toml documents them all."""
    return _iter_keys(cls, prefix)
