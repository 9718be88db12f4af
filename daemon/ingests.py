"""The ingests a config enables: how each is started on the call registry, its admission limit, and the
lines that tell an operator where it listens. The daemon (app.py) only calls these; a new ingest is one
more entry here, not a change to the daemon's lifecycle.

Every ingest object started here has `stop_accepting()` (no new calls: shutdown's first stage) and
`async close()` (sockets closed, its calls ended).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from daemon.calls.api import CallAdmission
from daemon.clock import Clock
from daemon.config import Config, parse_hostport
from daemon.configingest import WEBSOCKET_FORKS, websocket_enabled
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch")


@dataclass(frozen=True)
class IngestContext:
    cfg: Config
    admission: CallAdmission
    metrics: Metrics
    clock: Clock
    environ: Mapping[str, str]
    #: SO_REUSEPORT on shared listeners: the workers of one host accept on the same port
    reuse_port: bool = False


def ingest_limits(cfg: Config) -> dict[str, int]:
    """Per-ingest admission limits (the registry's `per_ingest_limits`)."""
    ing = cfg.ingest
    limits = {"twilio": ing.twilio.max_calls, "rtp": ing.rtp.max_calls, "whip": ing.whip.max_calls,
              "audiosocket": ing.audiosocket.max_calls, "siprec": ing.siprec.max_calls}
    for name in WEBSOCKET_FORKS:
        limits[name] = getattr(ing, name).max_calls
    return limits


async def start_ingests(ctx: IngestContext) -> tuple[list[Any], dict[str, int]]:
    """Start every enabled ingest; returns them (in start order) and the ports they bound. On a failure
    the ones already started are closed before the error propagates."""
    started: list[Any] = []
    ports: dict[str, int] = {}
    ing = ctx.cfg.ingest
    try:
        if websocket_enabled(ctx.cfg.ingest):
            ports["websocket"] = await _start_websocket(ctx, started)
            if ing.twilio.enabled:
                ports["twilio"] = ports["websocket"]
        if ing.audiosocket.enabled:
            from daemon.ingest.audiosocket.server import AudioSocketIngest

            audiosocket = AudioSocketIngest(ing.audiosocket, ctx.admission, ctx.metrics, ctx.clock,
                                            reuse_port=ctx.reuse_port)
            ports["audiosocket"] = await audiosocket.start()
            started.append(audiosocket)
        if ing.rtp.enabled:
            from daemon.ingest.rtp.control import RtpControlServer
            from daemon.ingest.rtp.server import RtpIngest

            rtp = RtpIngest(ing.rtp, ctx.admission, ctx.metrics, ctx.clock)
            await rtp.start()
            started.append(rtp)
            control = RtpControlServer(ing.rtp, rtp, ctx.metrics)
            ports["rtp_control"] = await control.start()
            started.append(control)
            if ing.siprec.enabled:
                from daemon.ingest.siprec.server import SiprecIngest

                siprec = SiprecIngest(ing.siprec, rtp, ctx.metrics, ctx.clock, reuse_port=ctx.reuse_port)
                ports.update(await siprec.start())
                started.append(siprec)
        if ing.whip.enabled:
            from daemon.ingest.whip.server import WhipIngest

            whip = WhipIngest(ing.whip, ctx.admission, ctx.metrics, ctx.clock, environ=ctx.environ)
            ports["whip"] = await whip.start()
            started.append(whip)
    except BaseException:
        for ingest in reversed(started):
            try:
                await ingest.close()
            except Exception:
                log.exception("closing %s after a failed start", type(ingest).__name__)
        raise
    return started, ports


async def _start_websocket(ctx: IngestContext, started: list[Any]) -> int:
    """One listener for every websocket dialect (each a route on its path); returns its port."""
    from daemon.ingest.websocket.dialects import fork_dialects
    from daemon.ingest.websocket.forkroute import ForkWebsocketIngest
    from daemon.ingest.websocket.listener import WebsocketListener

    ing = ctx.cfg.ingest
    listener = WebsocketListener(ing.websocket, reuse_port=ctx.reuse_port)
    if ing.twilio.enabled:
        from daemon.ingest.twilio.server import TwilioIngest

        twilio = TwilioIngest(ing.twilio, ctx.admission, ctx.metrics, ctx.clock,
                              max_frame_bytes=ing.websocket.max_frame_bytes)
        twilio.prepare()
        listener.add(twilio)
    for dialect in fork_dialects(ing, ctx.environ, ctx.clock):
        listener.add(ForkWebsocketIngest(dialect, ctx.admission, ctx.metrics, ctx.clock))
    port = await listener.start()
    started.append(listener)
    return port


def banner_lines(cfg: Config, ports: Mapping[str, int]) -> list[str]:
    """Where each ingest listens and how to send it a test call (the daemon's first log lines)."""
    lines: list[str] = []
    ing = cfg.ingest
    ws_base = f"ws://{parse_hostport(ing.websocket.listen)[0]}:{ports.get('websocket')}"
    if "twilio" in ports:
        url = f"{ws_base}{ing.twilio.path}"
        lines += [f"Twilio Media Streams: {url}",
                  f"try it: spoofwatch loadgen twilio --url {url} --calls 1 --clip marked --track both "
                  "--other-clip clean"]
    for name in WEBSOCKET_FORKS:
        fork = getattr(ing, name)
        if fork.enabled and "websocket" in ports:
            lines.append(f"{_TITLES[name]}: {ws_base}{fork.path}")
    if "audiosocket" in ports:
        lines.append(f"Asterisk AudioSocket (TCP, no auth: keep it private): "
                     f"{parse_hostport(ing.audiosocket.listen)[0]}:{ports['audiosocket']}")
    if ing.rtp.enabled:
        r = ing.rtp
        lines.append(f"RTP: {r.listen_host} ports {r.port_min}-{r.port_max}; control API "
                     f"http://{parse_hostport(r.control_listen)[0]}:{ports.get('rtp_control')}/v1/rtp/sessions")
    if ing.siprec.enabled:
        where = ", ".join(f"{k[7:].upper()} {ports[k]}" for k in ("siprec_udp", "siprec_tcp", "siprec_tls")
                          if k in ports)
        lines.append(f"SIPREC recording server (SIP {where}; media on the RTP ports above; SRCs from "
                     f"{', '.join(ing.siprec.allowed_networks)})" if ing.rtp.enabled else
                     "SIPREC is enabled but [ingest.rtp] is not: no recording session can be answered")
    if "whip" in ports:
        url = f"http://{parse_hostport(ing.whip.listen)[0]}:{ports['whip']}{ing.whip.path}"
        lines += [f"WHIP (WebRTC publishers, bearer token in {ing.whip.token_env}): {url}",
                  f"try it: spoofwatch loadgen whip --url {url} --calls 1 --clip marked "
                  f"(token from ${ing.whip.token_env})"]
    return lines


_TITLES = {"telnyx": "Telnyx media streaming", "plivo": "Plivo <Stream>", "exotel": "Exotel AgentStream",
           "vonage": "Vonage websocket (one mixed leg)", "freeswitch": "FreeSWITCH mod_audio_fork/mod_audio_stream",
           "jambonz": "jambonz listen", "asterisk_ws": "Asterisk chan_websocket",
           "audiohook": "Genesys AudioHook (signed upgrades)"}
