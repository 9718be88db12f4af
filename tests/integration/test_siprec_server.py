"""The SIPREC server on real loopback sockets (UDP and TCP) in front of a real RtpIngest: a session's
legs get the RTP ports the 200 OK names, media on them reaches the named legs, and every way a session
ends (BYE, Timer H, session timeout, shutdown) frees its ports; bad input is answered and counted."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import re
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemon.clock import SystemClock
from daemon.configingest import SiprecIngestConfig
from daemon.ingest.rtp.server import RtpIngest
from daemon.ingest.siprec.message import SipMessage, StreamFramer, parse_message
from daemon.ingest.siprec.server import SiprecIngest
from daemon.ops.metrics import Metrics
from tests.integration.rtp_helpers import Admission, running_ingest, tone_packets, until
from tests.unit.siprec_support import ack, in_dialog, load


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[tuple[SiprecIngest, RtpIngest, Admission, Metrics]]:
    admission = Admission()
    async with running_ingest(admission, auto_calls=False) as (rtp, _, metrics):
        cfg = dataclasses.replace(SiprecIngestConfig(), enabled=True, listen_udp="127.0.0.1:0",
                                  listen_tcp="127.0.0.1:0", **overrides)
        srs = SiprecIngest(cfg, rtp, metrics, SystemClock())
        await srs.start()
        try:
            yield srs, rtp, admission, metrics
        finally:
            await srs.close()


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[SipMessage] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(parse_message(data))


@asynccontextmanager
async def udp_client(port: int) -> AsyncIterator[tuple[asyncio.DatagramTransport, UdpClient]]:
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        UdpClient, remote_addr=("127.0.0.1", port))
    try:
        yield transport, proto
    finally:
        transport.close()


async def reply(proto: UdpClient, status: int) -> SipMessage:
    async with asyncio.timeout(5):
        while True:
            msg = await proto.queue.get()
            if msg.status == status:
                return msg


def answer_ports(ok: SipMessage) -> list[int]:
    return [int(p) for p in re.findall(r"m=audio (\d+) ", ok.body.decode())]


def drops(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("spoofwatch_drops_total", {"ingest": "siprec", "reason": reason}) or 0.0


async def test_udp_session_media_reaches_named_legs_and_bye_frees_ports() -> None:
    async with running() as (srs, rtp, admission, _), udp_client(srs.ports["siprec_udp"]) as (tx, client):
        invite = load("sipp_rfc7865.sip")
        tx.sendto(invite)
        await reply(client, 100)
        ok = await reply(client, 200)
        caller_port, agent_port = answer_ports(ok)
        tx.sendto(ack(invite, ok))
        media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for _, pkt in tone_packets(30):
                media.sendto(pkt, ("127.0.0.1", caller_port))
            (call,) = admission.calls.values()
            await until(lambda: "caller" in call.legs and len(call.legs["caller"].samples) >= 25 * 160)
        finally:
            media.close()
        assert call.info.ingest == "siprec" and call.info.metadata["participant.agent"] == "sip:agent@example.com"
        assert set(rtp.legs) == {caller_port, agent_port}
        tx.sendto(in_dialog("BYE", invite, ok, 2))
        await reply(client, 200)
        await until(lambda: call.ended is not None)
        assert call.ended == "bye" and rtp.legs == {} and srs.core.sessions == {}


async def test_silence_on_hold_does_not_end_a_signalled_call() -> None:
    async with running() as (srs, rtp, admission, _), udp_client(srs.ports["siprec_udp"]) as (tx, client):
        invite = load("sipp_rfc7865.sip")
        tx.sendto(invite)
        ok = await reply(client, 200)
        tx.sendto(ack(invite, ok))
        (call,) = admission.calls.values()
        # a call the control API would open ends after the inactivity timeout (0.4 s here); once it has,
        # the recording call, just as silent and older, must still be there
        rtp.allocate("plain", ["caller"], {}, {})
        plain = admission.calls["plain"]
        await until(lambda: plain.ended is not None)
        assert plain.ended == "inactivity"
        assert call.ended is None and len(rtp.legs) == 2


async def test_no_ack_retransmits_then_timer_h_frees_the_ports() -> None:
    async with running(t1_ms=20) as (srs, rtp, admission, metrics), \
            udp_client(srs.ports["siprec_udp"]) as (tx, client):
        tx.sendto(load("sipp_rfc7865.sip"))
        await reply(client, 200)
        await reply(client, 200)  # retransmitted: no ACK came
        (call,) = admission.calls.values()
        await until(lambda: call.ended is not None, timeout=10)
        assert call.ended == "no_ack" and rtp.legs == {} and drops(metrics, "no_ack") == 1


async def test_session_timeout_ends_a_session_without_media() -> None:
    async with running(session_timeout_s=0.3) as (srs, rtp, admission, _), \
            udp_client(srs.ports["siprec_udp"]) as (tx, client):
        invite = load("sipp_rfc7865.sip")
        tx.sendto(invite)
        ok = await reply(client, 200)
        tx.sendto(ack(invite, ok))
        (call,) = admission.calls.values()
        await until(lambda: call.ended is not None, timeout=10)
        assert call.ended == "session_timeout" and rtp.legs == {} and srs.core.sessions == {}


async def test_over_limit_503_garbage_counted_and_shutdown_frees_ports() -> None:
    async with running(max_calls=1) as (srs, rtp, admission, metrics), \
            udp_client(srs.ports["siprec_udp"]) as (tx, client):
        tx.sendto(b"\x00garbage\r\n\r\n")
        tx.sendto(load("sipp_rfc7865.sip"))
        await reply(client, 200)
        tx.sendto(load("sipp_rfc7865.sip", ("Call-ID: 1-100", "Call-ID: 2-100")))
        busy = await reply(client, 503)
        assert busy.get("retry-after") == "5"
        assert drops(metrics, "malformed") == 1 and drops(metrics, "max_calls") == 1
        assert len(admission.calls) == 1
        await srs.close()
        (call,) = admission.calls.values()
        assert call.ended == "shutdown" and rtp.legs == {}


async def test_tcp_session_and_an_unframeable_stream_is_closed() -> None:
    async with running() as (srs, rtp, admission, metrics):
        reader, writer = await asyncio.open_connection("127.0.0.1", srs.ports["siprec_tcp"])
        invite = load("labels_from_0.sip")
        writer.write(invite[:100])
        await writer.drain()
        writer.write(invite[100:])
        framer, got = StreamFramer(), []
        async with asyncio.timeout(5):
            while len(got) < 2:
                got += [parse_message(m) for m in framer.feed(await reader.read(65536))]
        assert [m.status for m in got] == [100, 200] and "transport=tcp" in got[1].get("contact")
        writer.write(ack(invite, got[1]))
        writer.write(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP x\r\n\r\n")  # no Content-Length on a stream
        async with asyncio.timeout(5):
            assert await reader.read(65536) == b""  # closed by the server
        writer.close()
        assert drops(metrics, "bad_content_length") == 1
        (call,) = admission.calls.values()
        assert set(call.info.metadata) >= {"participant.agent", "sip_session_id"} and len(rtp.legs) == 2


def self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "srs.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("srs.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return tmp / "cert.pem", tmp / "key.pem"


async def test_tls_listener_answers_a_recording_session(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    async with running(listen_tls="127.0.0.1:0", tls_cert_path=str(cert), tls_key_path=str(key)) as (srs, *_):
        ctx = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", srs.ports["siprec_tls"], ssl=ctx,
                                                       server_hostname="srs.test")
        writer.write(load("labels_from_0.sip"))
        framer, got = StreamFramer(), []
        async with asyncio.timeout(5):
            while len(got) < 2:
                got += [parse_message(m) for m in framer.feed(await reader.read(65536))]
        writer.close()
        assert [m.status for m in got] == [100, 200] and "transport=tls" in got[1].get("contact")


async def test_tls_with_a_missing_key_fails_at_start_naming_the_keys(tmp_path: Path) -> None:
    try:
        async with running(listen_tls="127.0.0.1:0", tls_cert_path=str(tmp_path / "no.pem"),
                           tls_key_path=str(tmp_path / "no.key")):
            raise AssertionError("started without a certificate")
    except OSError as exc:
        assert "tls_cert_path" in str(exc)
