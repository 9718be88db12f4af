"""Raw RTP from real senders to the real daemon (CLI subprocess, embedded simulator) and a real
webhook receiver: ffmpeg in five codecs with a marked and a clean clip, GStreamer rtppcmupay, and
SIPp replaying its bundled g711a.pcap + dtmf_2833_1.pcap. Everything on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.harness import ROOT, receiver, start_daemon

HAVE_PEERS = all(shutil.which(tool) for tool in ("ffmpeg", "gst-launch-1.0", "sipp"))
pytestmark = [pytest.mark.peer, pytest.mark.slow,
              pytest.mark.skipif(not HAVE_PEERS, reason="needs ffmpeg, gstreamer and sipp (scripts/system-deps.sh)")]

CLIPS = ROOT / "daemon" / "clips"
TOKEN = "peer-test-token"

# name → (ffmpeg output args, codec map for the control API)
FFMPEG = {
    "pcmu": (["-af", "aresample=8000,asetnsamples=n=160", "-ac", "1", "-c:a", "pcm_mulaw", "-payload_type", "0"], {}),
    "pcma": (["-af", "aresample=8000,asetnsamples=n=160", "-ac", "1", "-c:a", "pcm_alaw", "-payload_type", "8"], {}),
    "g722": (["-af", "aresample=16000,asetnsamples=n=320", "-ac", "1", "-ar", "16000", "-c:a", "g722"], {}),
    "l16_8k": (["-af", "aresample=8000,asetnsamples=n=160", "-ac", "1", "-ar", "8000", "-c:a", "pcm_s16be",
                "-payload_type", "97"], {"97": "L16/8000"}),
    "l16_16k": (["-af", "aresample=16000,asetnsamples=n=320", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16be",
                 "-payload_type", "118"], {}),  # Asterisk slin16: PT 118 is in the default map
    "opus": (["-ac", "1", "-ar", "48000", "-c:a", "libopus", "-frame_duration", "20", "-application", "voip",
              "-b:a", "32k", "-payload_type", "97"], {"97": "opus/48000/2"}),
}


class SipAnswerer(asyncio.DatagramProtocol):
    """Just enough of a SIP UAS for SIPp's uac_pcap scenario: 200 OK with an SDP that points the
    media at a spoofwatch RTP port, 200 OK to BYE."""

    def __init__(self, media_port: int) -> None:
        self.media_port = media_port
        self.transport: asyncio.DatagramTransport | None = None
        self.got_bye = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        text = data.decode(errors="replace")
        method = text.split(" ", 1)[0]
        if method not in ("INVITE", "BYE"):
            return
        headers = [line for line in text.split("\r\n") if line.split(":", 1)[0].lower() in
                   ("via", "from", "to", "call-id", "cseq")]
        headers = [h + ";tag=srs1" if h.lower().startswith("to:") and "tag=" not in h else h for h in headers]
        body = ""
        if method == "INVITE":
            body = (f"v=0\r\no=srs 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                    f"m=audio {self.media_port} RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"
                    f"a=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n")
            headers.append("Content-Type: application/sdp")
        else:
            self.got_bye.set()
        headers += ["Contact: <sip:srs@127.0.0.1>", f"Content-Length: {len(body)}"]
        reply = "SIP/2.0 200 OK\r\n" + "\r\n".join(headers) + "\r\n\r\n" + body
        assert self.transport is not None
        self.transport.sendto(reply.encode(), addr)


def rtp_config(tmp: Path, hook_url: str, base: int) -> Path:
    path = tmp / "rtp.toml"
    path.write_text(f"""
[daemon]
log_format = "json"
final_results_timeout_s = 8.0
[http]
listen = "127.0.0.1:0"
[ingest.twilio]
enabled = false
[ingest.whip]
enabled = false
[ingest.rtp]
enabled = true
port_min = {base}
port_max = {base + 59}
inactivity_timeout_ms = 3000
control_listen = "127.0.0.1:0"
[outbox]
path = "{tmp / 'outbox.sqlite3'}"
[[webhook]]
url = "{hook_url}"
secret_env = "E2E_WEBHOOK_SECRET"
""")
    return path


async def run(*cmd: str, cwd: Path | None = None, timeout: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def test_real_rtp_senders_give_the_right_verdicts(tmp_path: Path) -> None:
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").lstrip("gw") or 0)
    base = 24000 + 200 * worker + 2 * random.randrange(40)  # below the ephemeral range (32768-60999)
    async with receiver() as hook:
        daemon = await start_daemon(rtp_config(tmp_path, hook.url, base), env={"SPOOFWATCH_RTP_TOKEN": TOKEN})
        try:
            control = f"http://127.0.0.1:{daemon.ports['rtp_control']}/v1/rtp/sessions"
            ports: dict[str, int] = {}
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                cases = [(codec, clip) for codec in FFMPEG for clip in ("marked", "clean")]
                cases += [("gst_pcmu", "marked"), ("sipp", "g711a")]
                for codec, clip in cases:
                    codec_map = FFMPEG[codec][1] if codec in FFMPEG else {"101": "telephone-event/8000"}
                    async with http.post(control, json={"call_id": f"{codec}-{clip}", "metadata": {"case": codec},
                                                        "legs": [{"name": "caller", "codec_map": codec_map}]}) as resp:
                        assert resp.status == 201, await resp.text()
                        ports[f"{codec}-{clip}"] = (await resp.json())["legs"][0]["port"]
                bad_leg = {"name": "a", "codec_map": {"97": "speex/8000"}}
                async with http.post(control, json={"call_id": "x", "legs": [bad_leg]}) as r:
                    assert r.status == 400 and "unknown codec" in (await r.json())["error"]
            async with aiohttp.ClientSession() as http:
                async with http.get(control) as r:
                    assert r.status == 401

            senders = []
            for codec, (args, _) in FFMPEG.items():
                for clip in ("marked", "clean"):
                    wav = str(CLIPS / f"speech_{clip}_16k.wav")
                    senders.append(run("ffmpeg", "-loglevel", "error", "-re", "-i", wav, "-t", "6", *args,
                                       "-f", "rtp", f"rtp://127.0.0.1:{ports[f'{codec}-{clip}']}"))
            senders.append(run(
                "gst-launch-1.0", "-q", "filesrc", f"location={CLIPS / 'speech_marked_16k.wav'}", "!", "wavparse", "!",
                "audioconvert", "!", "audioresample", "!", "audio/x-raw,rate=8000,channels=1", "!", "mulawenc", "!",
                "rtppcmupay", "pt=0", "min-ptime=20000000", "max-ptime=20000000", "!", "udpsink", "host=127.0.0.1",
                f"port={ports['gst_pcmu-marked']}"))
            loop = asyncio.get_running_loop()
            answerer = SipAnswerer(ports["sipp-g711a"])
            sip_transport, _ = await loop.create_datagram_endpoint(lambda: answerer, local_addr=("127.0.0.1", 0))
            sip_port = sip_transport.get_extra_info("sockname")[1]
            (tmp_path / "pcap").symlink_to("/usr/share/sip-tester")
            senders.append(run("sipp", f"127.0.0.1:{sip_port}", "-sn", "uac_pcap", "-m", "1", "-i", "127.0.0.1",
                               "-p", str(base + 150), "-mp", str(base + 160), "-timeout", "40s", "-nostdin",
                               cwd=tmp_path, timeout=50))
            results = await asyncio.gather(*senders)
            sip_transport.close()
            for rc, out in results:
                assert rc == 0, out
            expected = set(ports)
            await hook.wait_for(lambda: {d.body["data"]["call_id"] for d in hook.of_type("call.summary")} >= expected,
                                timeout=60)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{daemon.ports['http']}/metrics") as r:
                    metrics = await r.text()
        finally:
            assert await daemon.stop() == 0

    summaries = {d.body["data"]["call_id"]: d.body["data"] for d in hook.of_type("call.summary")}
    alerted = {d.body["data"]["call_id"] for d in hook.of_type("call.spoof_detected")}
    # (auto_calls is off by default: packets on a port whose session already ended are dropped as unallocated_port)
    for call_id in expected:
        summary = summaries[call_id]
        leg = summary["legs"]["caller"]
        assert leg["segments_seen"] >= 1, (call_id, summary)
        if call_id.endswith("-marked"):
            assert call_id in alerted and leg["alerted"] and leg["max_spoofed_posterior"] >= 0.9, (call_id, summary)
        else:
            assert call_id not in alerted and leg["max_spoofed_posterior"] <= 0.1, (call_id, summary)
    # SIPp's dtmf_2833_1.pcap carries RFC 4733 telephone-events: counted, never decoded as audio
    not_audio = [line for line in metrics.splitlines()
                 if line.startswith('spoofwatch_drops_total{ingest="rtp",reason="not_audio"}')]
    assert not_audio and float(not_audio[0].split()[-1]) > 0, metrics
    assert alerted & expected == {c for c in expected if c.endswith("-marked")}  # 6 ffmpeg codecs + GStreamer
    assert len(alerted & expected) == 7
