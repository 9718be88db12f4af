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

from daemon.configingest import (
    IngestConfig,
    RtpIngestConfig,
    TwilioIngestConfig,
    WhipIngestConfig,
    ingest_checks,
)
from daemon.configschema import (
    ConfigError,
    _build,
    _meta,
    opt,
    parse_hostport,
    read_secret,
)
from daemon.configschema import iter_documented_keys as _iter_keys

__all__ = ["ConfigError", "IngestConfig", "RtpIngestConfig", "TwilioIngestConfig", "WhipIngestConfig", "opt",
           "parse_hostport", "read_secret"]

#: Environment variables holding the Behavioral Signals project id and API key.
CID_ENV = "SPOOFWATCH_CID"
API_KEY_ENV = "SPOOFWATCH_API_KEY"


@dataclass(frozen=True)
class DaemonConfig:
    #: keys a release replaced: refused with what to write instead
    MOVED_KEYS: typing.ClassVar[dict[str, str]] = {
        "replay_buffer_chunks": "replaced by replay_buffer_s, in seconds of audio (40 chunks = 10.0)",
    }

    log_format: str = opt("auto", "log line format: auto (json under systemd, text on a terminal), json, text",
                          choices=("auto", "json", "text"))
    log_level: str = opt("info", "log level", choices=("debug", "info", "warning", "error"))
    drain_timeout_s: float = opt(20.0, "on SIGTERM, how long open calls may finish before they are cut",
                                 min=0, max=3600)
    max_calls: int = opt(500, "concurrent calls over all ingests; beyond it new calls are refused. Default: "
                         "about where one process saturates its core on a 2-core VM, see benchmarks/README.md "
                         "(~370 Twilio, ~470 RTP calls; the knees are 200 and 250-400)",
                         min=1, max=100000)
    capacity_calls: int = opt(200, "calls ONE process carries at its knee (chunk latency p99 <= 20 ms, no loss), "
                              "as benchmarks/run.py measures it; the default is the Twilio knee measured on a "
                              "2-core VM on 2026-12-02 "
                              "(benchmarks/README.md): measure yours. Only sets spoofwatch_capacity_headroom "
                              "(1 - calls_active / capacity_calls, alerted under 0.1); it refuses no call, "
                              "max_calls does", min=1, max=100000)
    leg_queue_chunks: int = opt(40, "per-leg bounded queue of 250 ms chunks awaiting upstream (drop-oldest)",
                                min=2, max=10000)
    replay_buffer_s: float = opt(10.0, "per leg, at most this much audio is kept to replay after an upstream "
                                 "reconnect: only chunks not yet covered by a result, from the first voiced one "
                                 "(silence owes no result); 0 turns replay off", min=0, max=600)
    final_results_timeout_s: float = opt(10.0, "at leg end, how long to wait for upstream's last results",
                                         min=0, max=600)
    event_loop: str = opt("auto", 'asyncio event loop: "auto" (uvloop when it is installed, else asyncio\'s own), '
                          '"uvloop" (required: startup fails without it) or "asyncio". uvloop costs ~4x less CPU per '
                          "RTP datagram (benchmarks/README.md); the environment variable SPOOFWATCH_EVENT_LOOP, "
                          "when set, overrides this key",
                          choices=("auto", "uvloop", "asyncio"))


@dataclass(frozen=True)
class HttpConfig:
    listen: str = opt("127.0.0.1:9108", "HOST:PORT of /metrics, /healthz, /readyz and the live operator page / "
                      "(port 0: any free port)")
    ui_token_env: str = opt("SPOOFWATCH_UI_TOKEN", "environment variable (or systemd credential) with the bearer "
                            "token of the live page's /api/state and /api/events; unset: the page is open to "
                            "whoever reaches [http] listen, so keep it on loopback or behind an authenticating "
                            'proxy ("": never ask for a token)')


@dataclass(frozen=True)
class UpstreamConfig:
    target: str = opt("embedded", '"embedded" (simulator inside the daemon on loopback) or "host:port" '
                      'of the BehavioralStreamingApi, e.g. "streaming.behavioralsignals.com:443"')
    tls: str = opt("auto", 'TLS to the target: "auto" (on for any target that is not loopback; for "embedded", on '
                   'when the simulator has a certificate), "on", or "off" (plaintext: the API key rides in every '
                   'message, a WARNING at startup for a remote target)', choices=("auto", "on", "off"))
    ca_file: str = opt("", "PEM file of the certificate authorities trusted for the target (\"\": the system's)")
    tls_server_name: str = opt("", "name checked in the target's certificate instead of its host (\"\": the host)")
    channels: int = opt(2, "grpc.aio channels (separate HTTP/2 connections) in the pool", min=1, max=64)
    max_streams_per_channel: int = opt(100, "streams one channel carries before the pool prefers another",
                                       min=1, max=10000)
    connect_timeout_s: float = opt(5.0, "how long a new stream may take to connect", min=0.1, max=300)
    keepalive_s: float = opt(20.0, "HTTP/2 keepalive ping interval on every channel", min=1, max=3600)
    stall_timeout_s: float = opt(30.0, "a stream owed a result (voiced audio sent since the last one) that read "
                                 "nothing for this long is reopened; silence owes nothing, and a dead connection "
                                 "is found by the keepalive", min=1, max=3600)
    stall_voiced_dbfs: float = opt(-40.0, "a 250 ms chunk whose RMS level is at or above this counts as voiced "
                                   "for stall detection (conservative: 5 dB above the simulator's VAD; line "
                                   "noise sits near -60)", min=-90, max=0)
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
    tls_cert_file: str = opt("", 'PEM certificate (chain) the simulator serves TLS with ("": plaintext)')
    tls_key_file: str = opt("", "PEM private key of tls_cert_file")


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
    busy_timeout_s: float = opt(10.0, "how long an outbox write waits for another process's lock (e.g. `spoofwatch "
                                "outbox purge`) before it fails and is retried later (events held in memory)",
                                min=0.01, max=600)
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
class ProcessConfig:
    workers: int | str = opt(1, 'worker processes, each one event loop on one core with its own calls, upstream '
                             'connections and outbox partition (outbox-<n>); "auto": one per usable core. Above 1, '
                             "a supervisor process starts them, shares the websocket listeners (SO_REUSEPORT), "
                             "gives each a slice of the RTP ports and serves one /metrics for all",
                             min=1, max=256, choices=("auto",))


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
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
    if cfg.upstream.target != "embedded":
        try:
            parse_hostport(cfg.upstream.target, allow_port_zero=False)
        except ValueError as exc:
            raise ConfigError(f'upstream.target: must be "embedded" or "host:port": {exc}') from None
    if bool(cfg.simulator.tls_cert_file) != bool(cfg.simulator.tls_key_file):
        raise ConfigError("simulator.tls_cert_file and simulator.tls_key_file: set both (TLS) or neither")
    if cfg.upstream.target == "embedded" and cfg.upstream.tls == "on" and not cfg.simulator.tls_cert_file:
        raise ConfigError('upstream.tls: "on" with target "embedded" needs simulator.tls_cert_file and tls_key_file')
    ingest_checks(cfg.ingest, http_listen=cfg.http.listen)
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
