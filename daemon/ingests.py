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
    return {"twilio": ing.twilio.max_calls, "rtp": ing.rtp.max_calls, "whip": ing.whip.max_calls}


async def start_ingests(ctx: IngestContext) -> tuple[list[Any], dict[str, int]]:
    """Start every enabled ingest; returns them (in start order) and the ports they bound. On a failure
    the ones already started are closed before the error propagates."""
    started: list[Any] = []
    ports: dict[str, int] = {}
    ing = ctx.cfg.ingest
    try:
        if ing.twilio.enabled:
            from daemon.ingest.twilio.server import TwilioIngest

            twilio = TwilioIngest(ing.twilio, ctx.admission, ctx.metrics, ctx.clock, reuse_port=ctx.reuse_port)
            ports["twilio"] = await twilio.start()
            started.append(twilio)
        if ing.rtp.enabled:
            from daemon.ingest.rtp.control import RtpControlServer
            from daemon.ingest.rtp.server import RtpIngest

            rtp = RtpIngest(ing.rtp, ctx.admission, ctx.metrics, ctx.clock)
            await rtp.start()
            started.append(rtp)
            control = RtpControlServer(ing.rtp, rtp, ctx.metrics)
            ports["rtp_control"] = await control.start()
            started.append(control)
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


def banner_lines(cfg: Config, ports: Mapping[str, int]) -> list[str]:
    """Where each ingest listens and how to send it a test call (the daemon's first log lines)."""
    lines: list[str] = []
    ing = cfg.ingest
    if "twilio" in ports:
        url = f"ws://{parse_hostport(ing.twilio.listen)[0]}:{ports['twilio']}{ing.twilio.path}"
        lines += [f"Twilio Media Streams: {url}",
                  f"try it: spoofwatch loadgen twilio --url {url} --calls 1 --clip marked --track both "
                  "--other-clip clean"]
    if ing.rtp.enabled:
        r = ing.rtp
        lines.append(f"RTP: {r.listen_host} ports {r.port_min}-{r.port_max}; control API "
                     f"http://{parse_hostport(r.control_listen)[0]}:{ports.get('rtp_control')}/v1/rtp/sessions")
    if "whip" in ports:
        url = f"http://{parse_hostport(ing.whip.listen)[0]}:{ports['whip']}{ing.whip.path}"
        lines += [f"WHIP (WebRTC publishers, bearer token in {ing.whip.token_env}): {url}",
                  f"try it: spoofwatch loadgen whip --url {url} --calls 1 --clip marked "
                  f"(token from ${ing.whip.token_env})"]
    return lines
