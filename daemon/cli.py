"""`spoofwatch` command line. Each subcommand lives in its own module that exposes
`add_arguments(parser)` and `main(args) -> int`; those modules keep their top-level imports
light (heavy imports go inside `main`) so `spoofwatch --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: name → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("daemon.app_cli", "run the daemon"),
    "check-config": ("daemon.config_cli", "validate a config file (exit 0 good, 2 bad)"),
    "simulator": ("daemon.upstream.simulator.cli", "run the upstream simulator (a test double, not a detector)"),
    "analyze": ("daemon.analyze", "stream a WAV file through the audio path and print each result"),
    "loadgen": ("daemon.loadgen.cli", "send test calls to a running daemon (any ingest: twilio, rtp, whip, forks)"),
    "outbox": ("daemon.alerts.cli", "inspect and replay the webhook outbox"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spoofwatch", description="Real-time deepfake voice alarms for live calls.")
    from daemon import __version__

    parser.add_argument("--version", action="version", version=f"spoofwatch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)  # every command ships: a missing module is a bug, said loudly
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip())
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args._main(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
