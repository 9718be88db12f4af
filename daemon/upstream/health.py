"""Upstream health from stream outcomes (sans-I/O): degraded after consecutive failures with no
success in between (or at once on an authentication failure), recovered at the next success."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.ops.metrics import Metrics


@dataclass(frozen=True)
class HealthChange:
    up: bool
    detail: str


class UpstreamHealth:
    def __init__(self, metrics: Metrics | None = None, failures_to_degrade: int = 3) -> None:
        self.metrics = metrics
        self.failures_to_degrade = failures_to_degrade
        self.up = True
        self.consecutive_failures = 0
        if metrics is not None:
            metrics.upstream_up.set(1)

    def observe(self, state: str, now: float) -> list[HealthChange]:
        """`state` is a LegStream state: "streaming" is a success, "retrying" a failure, "auth_failed"
        and "tls_failed" failures that will not heal by themselves."""
        if state == "streaming":
            self.consecutive_failures = 0
            if not self.up:
                return [self._set(True, "streams are being served again")]
        elif state == "retrying":
            self.consecutive_failures += 1
            if self.up and self.consecutive_failures >= self.failures_to_degrade:
                return [self._set(False, f"{self.consecutive_failures} consecutive stream failures")]
        elif state == "auth_failed" and self.up:
            return [self._set(False, "upstream refused the credentials (UNAUTHENTICATED): calls are not analysed")]
        elif state == "tls_failed" and self.up:
            return [self._set(False, "the TLS handshake with the upstream was refused (certificate not trusted or "
                                     "name mismatch: see [upstream] ca_file, tls_server_name): calls are not analysed")]
        return []

    def _set(self, up: bool, detail: str) -> HealthChange:
        self.up = up
        if self.metrics is not None:
            self.metrics.upstream_up.set(1 if up else 0)
        return HealthChange(up, detail)
