"""The daemon's leg stream over TLS, against the simulator serving TLS with a certificate made here (a
test CA signing a server certificate for the name "sim.spoofwatch.test" only): trusted via
[upstream] ca_file and the name via tls_server_name, it streams; an untrusted certificate or a wrong
name is refused once, loudly (log, state, metric, health), not retried in a silent loop. Also: how
`tls = "auto"` resolves, the WARNING for plaintext to a remote target, and the simulator CLI flags."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemon.clock import SystemClock
from daemon.config import ConfigError, SimulatorConfig, UpstreamConfig, UpstreamCredentials
from daemon.model import DeepfakeResult, LegRef
from daemon.ops.metrics import Metrics
from daemon.upstream.channels import ChannelPool, is_loopback, use_tls
from daemon.upstream.health import UpstreamHealth
from daemon.upstream.simulator import SimulatorServer
from daemon.upstream.stream import LegStream
from tests.conftest import TEST_API_KEY, TEST_CID
from tests.integration.test_upstream_resilience import FAST, marked, until

SERVER_NAME = "sim.spoofwatch.test"
ROOT = Path(__file__).resolve().parents[2]


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_server_cert(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


@dataclasses.dataclass
class Pki:
    ca_file: Path  # the CA that signed the simulator's certificate
    other_ca_file: Path  # a CA that did not
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca("spoofwatch test CA")
    other, _ = make_ca("some other CA")
    cert, key = make_server_cert(ca, ca_key)
    p = Pki(d / "ca.pem", d / "other-ca.pem", d / "sim.pem", d / "sim.key")
    p.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    p.other_ca_file.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    p.cert_file.write_bytes(cert)
    p.key_file.write_bytes(key)
    return p


@pytest.fixture
async def tls_sim(pki: Pki) -> AsyncIterator[SimulatorServer]:
    settings = dataclasses.replace(SimulatorConfig(), tls_cert_file=str(pki.cert_file), tls_key_file=str(pki.key_file))
    server = SimulatorServer(settings, cid=TEST_CID, api_key=TEST_API_KEY)
    await server.start("127.0.0.1:0")
    yield server
    await server.stop(0.2)


class TlsLeg:
    def __init__(self, target: str, *, ca_file: str, server_name: str = SERVER_NAME) -> None:
        self.metrics = Metrics()
        self.health = UpstreamHealth(self.metrics)
        self.results: list[DeepfakeResult] = []
        self.states: list[str] = []
        self.health_details: list[str] = []
        self.pool = ChannelPool(target, tls=True, size=1, keepalive_s=20, max_streams_per_channel=100,
                                breaker_failures=5, breaker_open_s=0.3, clock=SystemClock(), metrics=self.metrics,
                                ca_file=ca_file, tls_server_name=server_name)
        self.stream = LegStream(self.pool, UpstreamCredentials(TEST_CID, TEST_API_KEY), LegRef("call-tls", "inbound"),
                                upstream=FAST, queue_chunks=200, replay_chunks=40, metrics=self.metrics,
                                clock=SystemClock(), on_result=self.results.append, on_state=self._on_state)

    def _on_state(self, _s: LegStream, state: str) -> None:
        self.states.append(state)
        self.health_details += [c.detail for c in self.health.observe(state, 0.0)]

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    async def run(self, n_chunks: int) -> None:
        self.stream.start()
        for c in marked(n_chunks):
            self.stream.send_chunk(c, 0.0)
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.stream.finish(10)
        await self.pool.close()


async def test_leg_streams_over_tls_with_the_configured_ca_and_name(tls_sim: SimulatorServer, pki: Pki) -> None:
    leg = TlsLeg(tls_sim.target, ca_file=str(pki.ca_file))
    await leg.run(24)
    await until(lambda: len(leg.results) >= 2)
    await leg.close()
    assert leg.states == ["streaming", "finished"] and leg.stream.simulated
    assert all(r.label == "spoofed" for r in leg.results) and max(r.end_s for r in leg.results) >= 4.0
    assert tls_sim.streams_opened == 1 and leg.value("spoofwatch_upstream_reconnects_total") == 0


@pytest.mark.parametrize(("wrong", "cause"), [("ca", "CERTIFICATE_VERIFY_FAILED"),
                                              ("name", "Hostname Verification Check failed")])
async def test_a_refused_certificate_fails_the_leg_once_and_says_why(tls_sim: SimulatorServer, pki: Pki, wrong: str,
                                                                     cause: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    leg = TlsLeg(tls_sim.target, ca_file=str(pki.other_ca_file if wrong == "ca" else pki.ca_file),
                 server_name=SERVER_NAME if wrong == "ca" else "not-the-name.test")
    with caplog.at_level(logging.WARNING, logger="spoofwatch.upstream"):
        await leg.run(4)
        await until(lambda: leg.stream.state == "tls_failed", timeout=15)
        for c in marked(8):  # later audio of the leg is counted, not queued or retried
            leg.stream.send_chunk(c, 0.0)
        await leg.close()
    assert leg.stream.attempts == 1 and leg.states == ["tls_failed"]  # no retry loop
    assert tls_sim.streams_opened == 0 and not leg.stream.analysed and leg.results == []
    assert leg.value("spoofwatch_upstream_errors_total", {"code": "TLS_HANDSHAKE"}) == 1
    assert leg.value("spoofwatch_upstream_reconnects_total") == 0
    assert leg.value("spoofwatch_drops_total", {"ingest": "upstream", "reason": "upstream_failed"}) >= 8
    assert "TLS_HANDSHAKE" in leg.stream.last_error and cause in leg.stream.last_error
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == "spoofwatch.upstream"]
    assert len(errors) == 1, errors
    assert "TLS handshake" in errors[0] and cause in errors[0] and "ca_file" in errors[0]
    assert "NOT analysed" in errors[0]
    assert len(leg.health_details) == 1 and "TLS" in leg.health_details[0]  # degraded at once


async def test_plaintext_client_gets_nothing_from_a_tls_simulator(tls_sim: SimulatorServer) -> None:
    metrics = Metrics()
    pool = ChannelPool(tls_sim.target, tls=False, size=1, keepalive_s=20, max_streams_per_channel=100,
                       breaker_failures=5, breaker_open_s=0.3, clock=SystemClock(), metrics=metrics)
    results: list[DeepfakeResult] = []
    stream = LegStream(pool, UpstreamCredentials(TEST_CID, TEST_API_KEY), LegRef("call-plain", "inbound"),
                       upstream=FAST, queue_chunks=200, replay_chunks=40, metrics=metrics, clock=SystemClock(),
                       on_result=results.append)
    stream.start()
    for c in marked(4):
        stream.send_chunk(c, 0.0)
    await until(lambda: (metrics.registry.get_sample_value("spoofwatch_upstream_reconnects_total") or 0) >= 1)
    await stream.aclose()
    await pool.close()
    assert results == [] and tls_sim.streams_opened == 0


def test_tls_auto_resolution() -> None:
    auto = UpstreamConfig()
    assert auto.tls == "auto"
    assert use_tls(auto, "streaming.behavioralsignals.com:443")
    assert use_tls(auto, "10.0.0.5:50051")
    assert not use_tls(auto, "127.0.0.1:50051") and not use_tls(auto, "localhost:50051")
    assert not use_tls(auto, "[::1]:50051")
    assert use_tls(auto, "127.0.0.1:50051", embedded_tls=True)  # the embedded simulator serves TLS
    assert not use_tls(dataclasses.replace(auto, tls="off"), "streaming.behavioralsignals.com:443")
    assert use_tls(dataclasses.replace(auto, tls="on"), "127.0.0.1:50051")
    assert is_loopback("127.0.0.2:1") and not is_loopback("example.com:1")


async def test_plaintext_to_a_remote_target_warns_and_a_missing_ca_file_is_a_config_error(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    def pool(target: str, tls: bool, ca_file: str = "") -> ChannelPool:
        return ChannelPool(target, tls=tls, size=1, keepalive_s=20, max_streams_per_channel=10, breaker_failures=5,
                           breaker_open_s=1, clock=SystemClock(), metrics=Metrics(), ca_file=ca_file)

    with caplog.at_level(logging.INFO, logger="spoofwatch.upstream"):
        remote = pool("192.0.2.10:443", tls=False)  # channels connect lazily: nothing is dialled here
        local = pool("127.0.0.1:50051", tls=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "TLS is OFF" in warnings[0] and "192.0.2.10:443" in warnings[0]
    await remote.close()
    await local.close()
    with pytest.raises(ConfigError, match=r"upstream\.ca_file: cannot read .*missing\.pem"):
        pool("192.0.2.10:443", tls=True, ca_file=str(tmp_path / "missing.pem"))


async def test_simulator_cli_serves_tls(pki: Pki) -> None:
    env = {**os.environ, "SPOOFWATCH_CID": str(TEST_CID), "SPOOFWATCH_API_KEY": TEST_API_KEY}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.cli", "simulator", "--listen", "127.0.0.1:0", "--tls-cert", str(pki.cert_file),
        "--tls-key", str(pki.key_file), cwd=str(ROOT), env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        port = 0
        async with asyncio.timeout(30):
            async for line in proc.stderr:
                if b"listening on" in line and line.startswith(b"spoofwatch simulator"):
                    port = int(line.decode().strip().rpartition(":")[2])
                    break
        assert port
        leg = TlsLeg(f"127.0.0.1:{port}", ca_file=str(pki.ca_file))
        await leg.run(12)
        await until(lambda: len(leg.results) >= 1)
        await leg.close()
        assert leg.states == ["streaming", "finished"]
    finally:
        proc.terminate()
        await proc.wait()
