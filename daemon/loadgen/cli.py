"""Send test calls to a running daemon: `twilio` plays Twilio Media Streams over websockets, `rtp`
plays raw RTP, `whip` publishes WebRTC over WHIP."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from daemon.loadgen import rtp, twilio, whip

    sub = parser.add_subparsers(dest="loadgen_protocol", metavar="PROTOCOL", required=True)
    p = sub.add_parser("twilio", help="Twilio Media Streams calls over websockets",
                       description=(twilio.__doc__ or "").strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    twilio.add_arguments(p)
    p.set_defaults(_loadgen_main=twilio.main)
    p = sub.add_parser("rtp", help="raw RTP calls", description=(rtp.__doc__ or "").strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    rtp.add_arguments(p)
    p.set_defaults(_loadgen_main=rtp.main)
    p = sub.add_parser("whip", help="WebRTC publishers over WHIP (aiortc)", description=(whip.__doc__ or "").strip(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    whip.add_arguments(p)
    p.set_defaults(_loadgen_main=whip.main)
    from daemon.loadgen import forks_cli

    for dialect, help_text in forks_cli.DIALECTS.items():  # the media-fork dialects (issue 14)
        p = sub.add_parser(dialect, help=help_text, description=(forks_cli.__doc__ or "").strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        forks_cli.add_arguments(p, dialect)
        p.set_defaults(_loadgen_main=forks_cli.main)


def main(args: argparse.Namespace) -> int:
    run: Callable[[argparse.Namespace], int] = args._loadgen_main
    return run(args)
