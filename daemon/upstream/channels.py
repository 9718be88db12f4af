"""A pool of grpc.aio channels, each its own HTTP/2 connection, with a circuit breaker per channel.

One HTTP/2 connection caps its concurrent streams, so legs are spread over several channels; the
least-loaded channel whose breaker allows it is picked. Distinct channel arguments plus a local
subchannel pool make each channel a separate TCP connection.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from daemon.clock import Clock
from daemon.config import ConfigError, UpstreamConfig, parse_hostport
from daemon.ops.metrics import Metrics
from daemon.upstream.pb import api_pb2_grpc

log = logging.getLogger("spoofwatch.upstream")


def is_loopback(target: str) -> bool:
    """Whether "host:port" names this machine (localhost or a loopback address)."""
    try:
        host, _ = parse_hostport(target)
    except ValueError:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def use_tls(up: UpstreamConfig, target: str, *, embedded_tls: bool = False) -> bool:
    """`[upstream] tls` resolved for `target`: "auto" is TLS for any target that is not loopback, and for
    the embedded simulator when it serves TLS (`embedded_tls`)."""
    if up.tls != "auto":
        return up.tls == "on"
    return embedded_tls or not is_loopback(target)


class CircuitBreaker:
    """closed → (N consecutive failures) → open for `open_s` → half-open (one trial) → closed/open."""

    def __init__(self, failures: int, open_s: float) -> None:
        self.failures_to_open = failures
        self.open_s = open_s
        self.state = "closed"
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self._trial_out = False

    def allow(self, now: float) -> bool:
        if self.state == "open" and now - self.opened_at >= self.open_s:
            self.state = "half_open"
            self._trial_out = False
        if self.state == "half_open":
            if self._trial_out:
                return False
            self._trial_out = True
            return True
        return self.state == "closed"

    def record_success(self) -> None:
        self.state = "closed"
        self.consecutive_failures = 0
        self._trial_out = False

    def record_failure(self, now: float) -> None:
        self.consecutive_failures += 1
        if self.state == "half_open" or self.consecutive_failures >= self.failures_to_open:
            self.state = "open"
            self.opened_at = now
            self._trial_out = False


@dataclass(eq=False)
class PooledChannel:
    index: int
    channel: grpc.aio.Channel
    stub: Any
    breaker: CircuitBreaker
    active: int = 0
    opened_streams: int = 0
    peers: set[str] = field(default_factory=set)


class ChannelPool:
    """`tls` with the system's trusted CAs unless `ca_file` (PEM) names others; `tls_server_name` is the
    name the certificate must carry when it is not the target's host. An unreadable `ca_file` raises
    ConfigError; plaintext to a target that is not loopback logs a WARNING (the API key is in every message)."""

    def __init__(self, target: str, *, tls: bool, size: int, keepalive_s: float, max_streams_per_channel: int,
                 breaker_failures: int, breaker_open_s: float, clock: Clock, metrics: Metrics,
                 ca_file: str = "", tls_server_name: str = "") -> None:
        self.target = target
        self.tls = tls
        self.clock = clock
        self.metrics = metrics
        self.max_streams_per_channel = max_streams_per_channel
        self.channels: list[PooledChannel] = []
        credentials: grpc.ChannelCredentials | None = None
        if tls:
            roots: bytes | None = None
            if ca_file:
                try:
                    roots = Path(ca_file).read_bytes()
                except OSError as exc:
                    raise ConfigError(f"upstream.ca_file: cannot read {ca_file}: {exc.strerror}") from None
            credentials = grpc.ssl_channel_credentials(roots)
            log.info("upstream %s: TLS (trusting %s%s)", target, ca_file or "the system's CAs",
                     f", certificate name {tls_server_name}" if tls_server_name else "")
        elif not is_loopback(target):
            log.warning("upstream %s: TLS is OFF for a target that is not loopback: the API key and the call audio "
                        "cross the network in clear ([upstream] tls)", target)
        for i in range(size):
            options: list[tuple[str, Any]] = [
                ("grpc.use_local_subchannel_pool", 1),  # no sharing of connections between channels
                ("spoofwatch.channel_index", i),  # distinct args: a distinct connection
                ("grpc.keepalive_time_ms", int(keepalive_s * 1000)),
                ("grpc.keepalive_timeout_ms", 10000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ]
            if credentials is not None:
                if tls_server_name:
                    options.append(("grpc.ssl_target_name_override", tls_server_name))
                channel = grpc.aio.secure_channel(target, credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(target, options=options)
            self.channels.append(PooledChannel(i, channel, api_pb2_grpc.BehavioralStreamingApiStub(channel),
                                               CircuitBreaker(breaker_failures, breaker_open_s)))

    def acquire(self) -> PooledChannel | None:
        """The least-loaded channel whose breaker allows a stream, or None when all are open."""
        now = self.clock.monotonic()
        # channels under the cap first, each group least-loaded first; allow() is asked lazily because
        # it hands out a half-open channel's single trial: asking a channel not then used would leave
        # it half-open with its trial "out" forever
        ordered = sorted(self.channels, key=lambda c: (c.active >= self.max_streams_per_channel, c.active))
        chosen = next((c for c in ordered if c.breaker.allow(now)), None)
        self._update_breaker_gauge()
        if chosen is None:
            return None
        chosen.active += 1
        chosen.opened_streams += 1
        return chosen

    def release(self, ch: PooledChannel) -> None:
        ch.active = max(0, ch.active - 1)

    def record_success(self, ch: PooledChannel) -> None:
        ch.breaker.record_success()
        self._update_breaker_gauge()

    def record_failure(self, ch: PooledChannel) -> None:
        ch.breaker.record_failure(self.clock.monotonic())
        self._update_breaker_gauge()

    def _update_breaker_gauge(self) -> None:
        self.metrics.breaker_open.set(sum(1 for c in self.channels if c.breaker.state == "open"))

    async def close(self) -> None:
        for ch in self.channels:
            await ch.channel.close(None)
