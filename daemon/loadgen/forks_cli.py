"""`spoofwatch loadgen <dialect>` for the media forks: telnyx, plivo, exotel, vonage, freeswitch,
jambonz, asterisk (chan_websocket), audiohook (Genesys) and audiosocket (Asterisk, TCP).

Each call plays `--clip` (the caller / customer / inbound track) and, where the dialect carries a
second party, `--other-clip` (outbound / callee / agent; default: the same clip) in that dialect, in
real time (or `--fast`), with the dialect's quirks. A summary like the Twilio loadgen's is printed;
the exit status is 1 when any call failed, 2 on bad arguments."""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import wave
from typing import TYPE_CHECKING

from daemon.loadgen.forks_frames import Exotel, ForkDialect, Plivo, Telnyx, Vonage, mix
from daemon.loadgen.forks_frames_pbx import ASTERISK_FORMATS, MIX_TYPES, AsteriskWs, AudioSocket, FreeSwitch, Jambonz
from daemon.loadgen.twilio import load_clip

if TYPE_CHECKING:
    from daemon.loadgen.wsclient import LoadResult

DIALECTS = {
    "telnyx": "Telnyx media streaming (two tracks, frames out of order)",
    "plivo": "Plivo <Stream> (no stop: the socket close ends the call)",
    "exotel": "Exotel AgentStream (raw s16le, 100 ms chunks)",
    "vonage": "Vonage websockets (websocket:connected, then binary L16, one mixed leg)",
    "freeswitch": "FreeSWITCH mod_audio_fork (subprotocol audio.drachtio.org)",
    "jambonz": "jambonz listen (subprotocol audio.jambonz.org)",
    "asterisk": "Asterisk chan_websocket (MEDIA_START, binary media)",
    "audiohook": "Genesys AudioHook v2 (RFC 9421 signed upgrade, open/ping/close)",
    "audiosocket": "Asterisk AudioSocket over TCP",
}


def _param(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected k=v, got {value!r}")
    return key, val


def add_arguments(p: argparse.ArgumentParser, dialect: str) -> None:
    if dialect == "audiosocket":
        p.add_argument("--host", default="127.0.0.1", help="daemon AudioSocket address (default 127.0.0.1)")
        p.add_argument("--port", type=int, required=True, help="daemon AudioSocket TCP port")
    else:
        p.add_argument("--url", required=True, help=f"daemon websocket URL, e.g. ws://127.0.0.1:8080/{dialect}")
    p.add_argument("--calls", type=int, default=1, help="concurrent calls (default 1)")
    p.add_argument("--clip", default="clean", help="WAV path, or a bundled clip: clean, marked (default clean)")
    p.add_argument("--other-clip", default=None, help="the other party's clip where the dialect carries one "
                   "(outbound / callee / agent; default: the same as --clip)")
    p.add_argument("--ramp-s", type=float, default=0.0, help="spread call starts over this many seconds")
    p.add_argument("--fast", action="store_true", help="send as fast as possible instead of in real time")
    if dialect != "audiosocket":
        p.add_argument("--param", type=_param, action="append", default=[], metavar="K=V",
                       help="a custom parameter / header / metadata entry of the dialect (repeatable)")
    if dialect != "audiohook":
        p.add_argument("--dtmf", default="", metavar="DIGITS", help="send these DTMF digits, one every 0.5 s")
    if dialect in ("telnyx", "plivo"):
        p.add_argument("--track", choices=("inbound", "outbound", "both"), default="both",
                       help="which track(s) the stream carries (default both)")
    if dialect == "telnyx":
        p.add_argument("--codec", choices=("PCMU", "PCMA", "L16"), default="PCMU", help="media_format.encoding")
        p.add_argument("--reorder", type=int, default=4, metavar="N",
                       help="shuffle frames within blocks of N (default 4; 1 = in order)")
        p.add_argument("--auth-token", default=None, help="x-telnyx-streaming-auth-token (default "
                       "$TELNYX_STREAMING_AUTH_TOKEN; none when unset)")
    if dialect == "plivo":
        p.add_argument("--codec", choices=("mulaw", "l16"), default="mulaw", help="audio/x-mulaw or audio/x-l16")
    if dialect in ("telnyx", "plivo", "exotel", "vonage", "freeswitch", "jambonz", "audiosocket"):
        default = 16000 if dialect == "vonage" else 8000
        p.add_argument("--rate", type=int, default=default,
                       help=f"sample rate in Hz (default {default}; for Telnyx and Plivo with L16 only)")
    if dialect == "exotel":
        p.add_argument("--basic-auth", default=None, metavar="KEY:TOKEN",
                       help="Basic credentials on the upgrade (default $EXOTEL_BASIC_AUTH; none when unset)")
    if dialect in ("freeswitch", "jambonz"):
        mix_default = "stereo" if dialect == "freeswitch" else "mono"  # freeswitch: the daemon's default mix_type
        p.add_argument("--mix", choices=MIX_TYPES, default=mix_default,
                       help=f"mono = caller, mixed = both, stereo = caller/callee interleaved (default {mix_default}"
                            + ("; must match the daemon's [ingest.freeswitch] mix_type, not sent in-band)"
                               if dialect == "freeswitch" else ")"))
        p.add_argument("--subprotocol", default=None, help="websocket subprotocol to offer instead of the default")
    if dialect == "freeswitch":
        p.add_argument("--late-metadata", type=int, nargs="?", const=5, default=0, metavar="N",
                       help="send the metadata after the first N audio frames (default without N: 5)")
    if dialect == "asterisk":
        p.add_argument("--format", choices=sorted(ASTERISK_FORMATS), default="ulaw", help="channel format")
        p.add_argument("--control", choices=("json", "plain"), default="json", help="control message format")
        p.add_argument("--late-media-start", type=int, nargs="?", const=5, default=0, metavar="N",
                       help="send MEDIA_START after the first N media frames (default without N: 5)")
    if dialect == "audiohook":
        p.add_argument("--api-key", default=None,
                       help="X-API-KEY (default $SPOOFWATCH_AUDIOHOOK_API_KEY, the daemon's default api_key_env)")
        p.add_argument("--client-secret", default=None,
                       help="base64 client secret the upgrade is signed with (default "
                            "$SPOOFWATCH_AUDIOHOOK_CLIENT_SECRET, the daemon's default client_secret_env; empty: "
                            "unsigned)")
        p.add_argument("--org-id", default="", help="organizationId (default: a random UUID)")
        p.add_argument("--ping-s", type=float, default=5.0, help="ping interval (default 5 s)")
        p.add_argument("--pause-at-s", type=float, default=None, help="send paused at this point of the clip")
        p.add_argument("--pause-s", type=float, default=2.0, help="with --pause-at-s: paused this long (default 2)")
        p.add_argument("--probe", action="store_true", help="connection probes (conversationId all zeros, no audio)")


def build(dialect: str, args: argparse.Namespace) -> ForkDialect:
    """The frame builder for `dialect` from the parsed arguments (reads the clips)."""
    params: dict[str, str] = dict(getattr(args, "param", []))
    rate: int = getattr(args, "rate", 8000)
    if dialect in ("telnyx", "plivo") and args.codec in ("PCMU", "PCMA", "mulaw"):
        rate = 8000
    if dialect == "asterisk":
        rate = ASTERISK_FORMATS[args.format][0]
    clip = load_clip(args.clip, rate)
    other = load_clip(args.other_clip, rate) if args.other_clip else None
    both = {"inbound": clip, "outbound": clip if other is None else other}
    if dialect in ("telnyx", "plivo"):
        tracks = both if args.track == "both" else {args.track: both[args.track]}
        if dialect == "telnyx":
            token = args.auth_token or os.environ.get("TELNYX_STREAMING_AUTH_TOKEN") or None
            return Telnyx(tracks, codec=args.codec, rate=rate, reorder=args.reorder, auth_token=token, params=params,
                          dtmf=args.dtmf)
        return Plivo(tracks, codec=args.codec, rate=rate, params=params, dtmf=args.dtmf)
    if dialect == "exotel":
        return Exotel(clip, rate=rate, params=params, dtmf=args.dtmf)
    if dialect == "vonage":
        return Vonage(mix(clip, other), rate=rate, params=params, dtmf=args.dtmf)
    if dialect == "freeswitch":
        return FreeSwitch(clip, other, mix_type=args.mix, rate=rate, late_metadata=args.late_metadata,
                          subprotocol=args.subprotocol or "audio.drachtio.org", params=params)
    if dialect == "jambonz":
        return Jambonz(clip, other, mix_type=args.mix, rate=rate, params=params, dtmf=args.dtmf,
                       subprotocol=args.subprotocol or "audio.jambonz.org")
    if dialect == "asterisk":
        return AsteriskWs(clip, fmt=args.format, control=args.control, late_media_start=args.late_media_start,
                          params=params, dtmf=args.dtmf)
    if dialect == "audiosocket":
        return AudioSocket(clip, rate=rate, dtmf=args.dtmf)
    raise ValueError(f"unknown dialect {dialect!r}")


def main(args: argparse.Namespace) -> int:
    from daemon.loadgen.forks import run_audiohook_calls, run_fork_calls
    from daemon.loadgen.forks_socket import Target

    dialect: str = args.loadgen_protocol
    if args.calls < 1:
        print("--calls must be at least 1", file=sys.stderr)
        return 2
    try:
        if dialect == "audiohook":
            from daemon.audio.codecs import encode_ulaw
            from daemon.loadgen.forks_audiohook import AudioHookPlan

            customer = load_clip(args.clip, 8000)
            agent = load_clip(args.other_clip, 8000) if args.other_clip else customer
            plan = AudioHookPlan(encode_ulaw(customer), encode_ulaw(agent),
                                 api_key=args.api_key or os.environ.get("SPOOFWATCH_AUDIOHOOK_API_KEY", ""),
                                 client_secret_b64=(args.client_secret if args.client_secret is not None
                                                    else os.environ.get("SPOOFWATCH_AUDIOHOOK_CLIENT_SECRET", "")),
                                 organization_id=args.org_id, ping_s=args.ping_s, pause_at_s=args.pause_at_s,
                                 pause_s=args.pause_s, params=dict(args.param), probe=args.probe)
            if not plan.api_key:
                print("--api-key (or $SPOOFWATCH_AUDIOHOOK_API_KEY) is required", file=sys.stderr)
                return 2
            result: LoadResult = asyncio.run(run_audiohook_calls(plan, args.url, calls=args.calls,
                                                                 realtime=not args.fast, ramp_s=args.ramp_s))
        else:
            fork = build(dialect, args)
            target = Target(host=args.host, port=args.port) if dialect == "audiosocket" else Target(url=args.url)
            headers = _exotel_auth(args) if dialect == "exotel" else {}
            result = asyncio.run(run_fork_calls(fork, target, calls=args.calls, realtime=not args.fast,
                                                ramp_s=args.ramp_s, extra_headers=headers))
    except (OSError, EOFError, wave.Error) as exc:
        print(f"cannot read clip: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a bad combination of options, a bad base64 secret
        print(f"spoofwatch loadgen {dialect}: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.calls_ok == result.calls else 1


def _exotel_auth(args: argparse.Namespace) -> dict[str, str]:
    creds = args.basic_auth or os.environ.get("EXOTEL_BASIC_AUTH")
    if not creds:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(creds.encode()).decode("ascii")}
