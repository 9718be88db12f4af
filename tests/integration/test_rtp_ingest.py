"""RtpIngest over real UDP sockets on 127.0.0.1, with a recording CallAdmission: reordering on the
wire, garbage datagrams, SSRC change, RTCP BYE, inactivity, a flood next to a normal call, and the
control API."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest

from daemon.ingest.rtp.control import RtpControlServer
from daemon.ingest.rtp.packet import build_rtcp_bye
from daemon.ingest.rtp.server import RtpIngest
from daemon.ops.metrics import Metrics
from tests.integration.rtp_helpers import Admission, drops, running_ingest, tone_packets, until


@pytest.fixture
async def ingest() -> AsyncIterator[tuple[RtpIngest, Admission, Metrics]]:
    async with running_ingest() as running:
        yield running


async def test_reordered_on_the_wire_comes_out_in_order(ingest: tuple[RtpIngest, Admission, Metrics]) -> None:
    rtp, admission, _ = ingest
    port = rtp.rtp_ports[0]
    packets = tone_packets(50)
    order = list(range(50))
    for i in range(0, 50, 4):
        random.Random(i).shuffle(seg := order[i:i + 4])
        order[i:i + 4] = seg
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in order:
            s.sendto(packets[i][1], ("127.0.0.1", port))
        s.sendto(build_rtcp_bye(7), ("127.0.0.1", port + 1))
    await until(lambda: any(c.ended for c in admission.calls.values()))
    (call,) = admission.calls.values()
    assert call.info.call_id == f"rtp-{port}-00000007" and call.ended == "rtcp_bye"
    leg = call.legs["caller"]
    expected = np.concatenate([np.frombuffer(bytes(p[1][12:]), np.uint8) for p in packets])
    from daemon.audio.codecs import decode_ulaw

    assert np.array_equal(leg.samples, decode_ulaw(expected.tobytes())) and leg.closed and leg.silence_s == 0
    assert leg.raw_pushes > 0  # after playout starts, PCMU goes to the leg as it arrives, undecoded


async def test_garbage_counted_ssrc_change_continues_leg_and_gaps_filled(
        ingest: tuple[RtpIngest, Admission, Metrics]) -> None:
    rtp, admission, metrics = ingest
    port = rtp.rtp_ports[1]
    first = tone_packets(10, seq0=65530, ssrc=1)
    second = tone_packets(10, seq0=200, ssrc=2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x00", b"\x40" + b"\x00" * 20, b"\x80" * 5):
            s.sendto(junk, ("127.0.0.1", port))
        for i, (_, p) in enumerate(first):
            if i != 5:  # one lost packet → 20 ms of silence from the timestamp delta
                s.sendto(p, ("127.0.0.1", port))
        await asyncio.sleep(0.1)
        for _, p in second:
            s.sendto(p, ("127.0.0.1", port))
    await until(lambda: any(c.ended for c in admission.calls.values()), timeout=5)
    (call,) = admission.calls.values()  # the SSRC change did not open a second call
    assert call.ended == "inactivity"
    leg = call.legs["caller"]
    assert len(leg.samples) == 19 * 160 and leg.silence_s == pytest.approx(0.02)
    assert drops(metrics, "too_short") == 3 and drops(metrics, "bad_version") == 1


async def test_flood_on_one_port_does_not_starve_another(ingest: tuple[RtpIngest, Admission, Metrics]) -> None:
    rtp, admission, _ = ingest
    normal_port, flood_port = rtp.rtp_ports[2], rtp.rtp_ports[3]
    normal = tone_packets(25, ssrc=10)
    flood = [p for _, p in tone_packets(1500, ssrc=11)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        for i, (_, p) in enumerate(normal):
            s.sendto(p, ("127.0.0.1", normal_port))
            for f in flood[i * 60:(i + 1) * 60]:
                s.sendto(f, ("127.0.0.1", flood_port))
            await asyncio.sleep(0.002)
        s.sendto(build_rtcp_bye(10), ("127.0.0.1", normal_port + 1))
    await until(lambda: f"rtp-{normal_port}-0000000a" in admission.calls
                and admission.calls[f"rtp-{normal_port}-0000000a"].ended is not None)
    assert len(admission.calls[f"rtp-{normal_port}-0000000a"].legs["caller"].samples) == 25 * 160


async def test_control_api(ingest: tuple[RtpIngest, Admission, Metrics], monkeypatch: pytest.MonkeyPatch) -> None:
    rtp, admission, metrics = ingest
    monkeypatch.setenv("TEST_RTP_TOKEN", "s3cret")
    cfg = dataclasses.replace(rtp.cfg, control_listen="127.0.0.1:0", control_token_env="TEST_RTP_TOKEN")
    control = RtpControlServer(cfg, rtp, metrics)
    port = await control.start()
    base = f"http://127.0.0.1:{port}/v1/rtp/sessions"
    auth = {"Authorization": "Bearer s3cret"}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(base, json={"call_id": "c1"}) as r:
                assert r.status == 401
            async with http.post(base, headers={"Authorization": "Bearer nope"}, json={"call_id": "c1"}) as r:
                assert r.status == 401
            async with http.post(base, headers=auth, data=b"{not json") as r:
                assert r.status == 400
            async with http.post(base, headers=auth, json={"call_id": "c1", "legs": [{"name": "a", "codec_map":
                                                                                    {"300": "PCMU/8000"}}]}) as r:
                assert r.status == 400 and "0–127" in (await r.json())["error"]
            async with http.post(base, headers=auth, json={"call_id": "c1", "legs": [{"name": "caller"},
                                                                                   {"name": "agent"}],
                                                          "metadata": {"pbx": "ast1"}}) as r:
                assert r.status == 201
                legs = {lg["name"]: lg for lg in (await r.json())["legs"]}
            assert legs["caller"]["port"] != legs["agent"]["port"]
            assert admission.calls["c1"].info.metadata["pbx"] == "ast1"
            async with http.post(base, headers=auth, json={"call_id": "c1"}) as r:
                assert r.status == 409
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for _, p in tone_packets(5, ssrc=3):
                    s.sendto(p, ("127.0.0.1", legs["agent"]["port"]))
            await until(lambda: "agent" in admission.calls["c1"].legs
                        and len(admission.calls["c1"].legs["agent"].samples) == 5 * 160)
            async with http.delete(f"{base}/c1", headers=auth) as r:
                assert r.status == 204
            assert admission.calls["c1"].ended == "control_api"
            async with http.delete(f"{base}/c1", headers=auth) as r:
                assert r.status == 404
            admission.limit = len(admission.calls)
            async with http.post(base, headers=auth, json={"call_id": "c2"}) as r:
                assert r.status == 503 and "max_calls" in (await r.json())["error"]
            # 10 port pairs: a call holding 3 leaves 7, so 8 legs cannot be placed and 7 can
            admission.limit = 100
            rtp.allocate("holder", ["a", "b", "c"], {}, {})
            assert len(rtp.free_ports()) == 7
            async with http.post(base, headers=auth, json={"call_id": "c3", "legs": [{"name": f"l{i}"}
                                                                                   for i in range(8)]}) as r:
                assert r.status == 503 and "no_free_ports" in (await r.json())["error"]
            assert "c3" not in admission.calls and metrics.registry.get_sample_value(
                "spoofwatch_calls_refused_total", {"ingest": "rtp", "reason": "no_free_ports"}) == 1
            async with http.post(base, headers=auth, json={"call_id": "c4", "legs": [{"name": f"l{i}"}
                                                                                   for i in range(7)]}) as r:
                assert r.status == 201 and len((await r.json())["legs"]) == 7
            assert rtp.free_ports() == []
    finally:
        await control.close()
