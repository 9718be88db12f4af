"""Send test calls to a running daemon: `twilio` plays Twilio Media Streams over websockets
(`rtp` plays raw RTP when that generator is installed)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
from collections.abc import Callable
from types import ModuleType


def _optional(module_name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # the module exists but one of its own imports is missing: say so
        return None


def _rtp_runner(module: ModuleType) -> Callable[[argparse.Namespace], int]:
    main_async = getattr(module, "main_async", None)
    if main_async is not None and inspect.iscoroutinefunction(main_async):
        def run(args: argparse.Namespace) -> int:
            rc: int = asyncio.run(main_async(args))
            return rc

        return run
    main: Callable[[argparse.Namespace], int] = module.main
    return main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from daemon.loadgen import twilio

    sub = parser.add_subparsers(dest="loadgen_protocol", metavar="PROTOCOL", required=True)
    p = sub.add_parser("twilio", help="Twilio Media Streams calls over websockets",
                       description=(twilio.__doc__ or "").strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    twilio.add_arguments(p)
    p.set_defaults(_loadgen_main=twilio.main)
    rtp = _optional("daemon.loadgen.rtp")
    if rtp is not None:
        p = sub.add_parser("rtp", help="raw RTP calls", description=(rtp.__doc__ or "").strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        rtp.add_arguments(p)
        p.set_defaults(_loadgen_main=_rtp_runner(rtp))


def main(args: argparse.Namespace) -> int:
    run: Callable[[argparse.Namespace], int] = args._loadgen_main
    return run(args)
