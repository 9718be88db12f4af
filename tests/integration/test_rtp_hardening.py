"""RTP ingest hardening over real loopback sockets: a failing leg next to a real call, source
latching (RTP and RTCP), auto_calls off by default, taken ports at start, the SO_RCVBUF read-back,
sequence rewinds and jumps (RFC 3550 A.1), and gap fill held to the wall clock."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import numpy as np
import pytest

from daemon.config import RtpIngestConfig
from daemon.ingest.rtp.gapfill import GAP_FILL_SLACK_S
from daemon.ingest.rtp.packet import build_rtcp_bye, build_rtp
from daemon.model import AudioFormat, CallInfo
from tests.integration.rtp_helpers import (
    Admission,
    RecordingCall,
    RecordingLeg,
    drops,
    port_base,
    running_ingest,
    tone_packets,
    until,
)

LOG = "spoofwatch.ingest.rtp"


class FailingLeg(RecordingLeg):
    def push(self, payload: bytes, received_at: float) -> None:
        raise RuntimeError("sink broke (test)")

    def push_pcm(self, samples: np.ndarray, rate: int, received_at: float) -> None:
        raise RuntimeError("sink broke (test)")


class FailingCall(RecordingCall):
    def open_leg(self, leg: str, fmt: AudioFormat) -> RecordingLeg:
        return self.legs.setdefault(leg, FailingLeg(fmt))


class SomeFailAdmission(Admission):
    """Calls on the given ports get a sink that raises."""

    def __init__(self, failing_ports: set[int]) -> None:
        super().__init__()
        self.failing_ports = failing_ports

    def admit(self, info: CallInfo) -> RecordingCall:
        if int(info.metadata.get("rtp_port", "0")) in self.failing_ports:
            return self.calls.setdefault(info.call_id, FailingCall(info))
        return super().admit(info)


def l16_packets(n: int, ssrc: int) -> list[bytes]:
    pcm = np.full(320, 1000, dtype=">i2").tobytes()  # 20 ms of L16/16000 (PT 118 in the default map)
    return [build_rtp(118, i, i * 320, ssrc, pcm) for i in range(n)]


@pytest.mark.parametrize("codec", ["l16_at_tick", "pcmu_on_arrival"])
async def test_a_failing_leg_ends_alone_and_is_logged_once(codec: str, caplog: pytest.LogCaptureFixture) -> None:
    base = port_base()
    failing_port = base + (base % 2) + 2
    admission = SomeFailAdmission({failing_port})
    caplog.set_level(logging.INFO, LOG)
    async with running_ingest(admission, port_min=base, port_max=base + 19) as (rtp, _, metrics):
        normal_port = rtp.rtp_ports[0]
        assert failing_port in rtp.rtp_ports
        bad = l16_packets(60, ssrc=66) if codec == "l16_at_tick" else [p for _, p in tone_packets(60, ssrc=66)]
        good = tone_packets(60, ssrc=5)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(60):  # both streams at once, the failing one keeps sending after it failed
                s.sendto(good[i][1], ("127.0.0.1", normal_port))
                s.sendto(bad[i], ("127.0.0.1", failing_port))
                if i % 10 == 9:
                    await until(lambda: rtp.legs.get(normal_port) is not None
                                and rtp.legs[normal_port].packets >= 1)
            s.sendto(build_rtcp_bye(5), ("127.0.0.1", normal_port + 1))
        normal_id, failing_id = f"rtp-{normal_port}-00000005", f"rtp-{failing_port}-00000042"
        await until(lambda: normal_id in admission.calls and admission.calls[normal_id].ended is not None
                    and failing_id in admission.calls and admission.calls[failing_id].ended is not None)
        assert admission.calls[normal_id].ended == "rtcp_bye"
        assert len(admission.calls[normal_id].legs["caller"].samples) == 60 * 160  # every packet of the good call
        assert admission.calls[failing_id].ended == "error"
        assert set(admission.calls) == {normal_id, failing_id}  # the quarantined port opened no new call
        assert drops(metrics, "leg_error") == 1
        failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(failures) == 1 and "rtp leg failed" in failures[0].getMessage() and failures[0].exc_info


async def test_each_leg_latches_to_its_first_source() -> None:
    async with running_ingest() as (rtp, admission, metrics):
        port = rtp.rtp_ports[0]
        ports = rtp.allocate("latched", ["caller"], {}, {})
        port = ports["caller"]
        packets = tone_packets(20, ssrc=9)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pbx, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_host, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pbx_rtcp:
            other_host.bind(("127.0.0.2", 0))  # another address on the loopback: "another host"
            for i, (_, p) in enumerate(packets):
                pbx.sendto(p, ("127.0.0.1", port))
                if i % 4 == 0:  # same host, other port; and another host: never audio
                    intruder.sendto(build_rtp(0, 5000 + i, 0, 9, b"\xff" * 160), ("127.0.0.1", port))
                    other_host.sendto(build_rtp(0, 6000 + i, 0, 9, b"\xff" * 160), ("127.0.0.1", port))
            await until(lambda: rtp.legs[port].packets == 20)
            other_host.sendto(build_rtcp_bye(9), ("127.0.0.1", port + 1))  # a BYE from another host is refused
            other_host.sendto(build_rtcp_bye(9), ("127.0.0.1", port))  # muxed too
            await until(lambda: drops(metrics, "source_mismatch") == 12)
            assert admission.calls["latched"].ended is None
            pbx_rtcp.sendto(build_rtcp_bye(9), ("127.0.0.1", port + 1))  # the PBX's RTCP socket: same host
            await until(lambda: admission.calls["latched"].ended is not None)
    assert admission.calls["latched"].ended == "rtcp_bye"
    assert len(admission.calls["latched"].legs["caller"].samples) == 20 * 160


async def test_auto_calls_are_off_by_default() -> None:
    assert RtpIngestConfig().auto_calls is False
    async with running_ingest(auto_calls=False) as (rtp, admission, metrics):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, p in tone_packets(5):
                s.sendto(p, ("127.0.0.1", rtp.rtp_ports[0]))
        await until(lambda: drops(metrics, "unallocated_port") == 5)
    assert admission.calls == {} and rtp.calls == {}


async def test_taken_ports_are_skipped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)
    base = port_base()
    first = base + (base % 2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held_rtp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as held_rtcp:
        held_rtp.bind(("127.0.0.1", first + 2))  # another program has an RTP port...
        held_rtcp.bind(("127.0.0.1", first + 7))  # ...and the RTCP port of another pair
        async with running_ingest(port_min=base, port_max=base + 19) as (rtp, admission, metrics):
            assert first + 2 not in rtp.rtp_ports and first + 6 not in rtp.rtp_ports
            assert len(rtp.rtp_ports) == 8 and [p for p, _ in rtp.unavailable_ports] == [first + 2, first + 7]
            assert metrics.registry.get_sample_value("spoofwatch_rtp_ports_usable") == 8
            summary = [r.getMessage() for r in caplog.records if "port pairs usable" in r.getMessage()]
            assert len(summary) == 1 and "8 of 10 port pairs usable" in summary[0], summary
            assert f"{first + 2} (" in summary[0] and f"{first + 7} (" in summary[0]
            ports = rtp.allocate("served", ["caller", "agent"], {}, {})  # the rest serve calls
            assert first + 2 not in ports.values()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _, p in tone_packets(5):
                    s.sendto(p, ("127.0.0.1", ports["agent"]))
            await until(lambda: "agent" in admission.calls["served"].legs
                        and len(admission.calls["served"].legs["agent"].samples) == 5 * 160)


def rmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return None


async def test_rcvbuf_smaller_than_asked_is_logged_with_the_sysctl(caplog: pytest.LogCaptureFixture) -> None:
    cap = rmem_max()
    if cap is None or 2 * cap > 256 * 1048576:
        pytest.skip("needs /proc/sys/net/core/rmem_max below 128 MiB")
    caplog.set_level(logging.INFO, LOG)
    async with running_ingest(recv_buffer_bytes=2 * cap) as (rtp, _, _):
        assert rtp.rcvbuf_bytes == cap  # Linux caps at rmem_max; getsockopt reads back double, halved here
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "SO_RCVBUF" in r.getMessage()]
    assert len(warning) == 1 and f"sysctl -w net.core.rmem_max={2 * cap}" in warning[0]
    caplog.clear()
    async with running_ingest(recv_buffer_bytes=min(cap, 65536 * 4)) as (rtp, _, _):
        assert rtp.rcvbuf_bytes == min(cap, 65536 * 4)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and "SO_RCVBUF" in r.getMessage()]


async def test_sequence_rewind_resynchronises_and_late_packets_are_counted() -> None:
    async with running_ingest() as (rtp, admission, metrics):
        port = rtp.rtp_ports[0]
        first = tone_packets(30, seq0=40000, ssrc=4)
        restarted = [(s, build_rtp(0, s, 80000 + i * 160, 4, p[12:])) for i, (s, p) in
                     enumerate(tone_packets(30, seq0=10, ssrc=4))]  # PBX restarted: seq and ts start over
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, p in first:
                s.sendto(p, ("127.0.0.1", port))
            await until(lambda: port in rtp.legs and rtp.legs[port].jitter.stats.released == 30)
            s.sendto(first[3][1], ("127.0.0.1", port))  # long played: late
            s.sendto(build_rtp(0, 20000, 0, 4, b"\xff" * 160), ("127.0.0.1", port))  # a lone jump: dropped
            for _, p in restarted:
                s.sendto(p, ("127.0.0.1", port))
            s.sendto(build_rtcp_bye(4), ("127.0.0.1", port + 1))
        await until(lambda: any(c.ended for c in admission.calls.values()))
    (call,) = admission.calls.values()
    assert len(call.legs["caller"].samples) == 60 * 160  # nothing of the restarted stream was dropped as late
    assert drops(metrics, "late") == 1 and drops(metrics, "seq_jump") == 1
    assert rtp.legs == {} and call.ended == "rtcp_bye"


async def test_gap_fill_never_runs_ahead_of_the_wall_clock() -> None:
    async with running_ingest() as (rtp, admission, metrics):
        port = rtp.rtp_ports[0]
        payload = b"\xff" * 160
        started = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(40):  # each packet claims 1.5 s of lost audio before it (in ~no time)
                s.sendto(build_rtp(0, 7 + i, i * (160 + 12000), 3, payload), ("127.0.0.1", port))
            await until(lambda: port in rtp.legs and rtp.legs[port].jitter.stats.released == 40)
            await until(lambda: rtp.legs[port].backlog == [])
            elapsed = time.monotonic() - started
            leg = admission.calls[f"rtp-{port}-00000003"].legs["caller"]
            # silence never exceeds the wall-clock time that passed (was 39 × 1.5 = 58.5 s); the audio
            # itself arrived in a burst, so here even less is filled
            assert 0 < leg.silence_s <= elapsed + GAP_FILL_SLACK_S + 1e-6
            assert len(leg.samples) == 40 * 160
            assert drops(metrics, "gap_fill_capped") >= 1
