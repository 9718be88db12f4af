"""Validate a config file: exit 0 when it is good, 2 with one message naming the file, the key
and what is allowed when it is not."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="config.toml to check")


def main(args: argparse.Namespace) -> int:
    from daemon.config import ConfigError, load_config

    try:
        cfg = load_config(args.path)
    except ConfigError as exc:
        print(f"spoofwatch: {exc}", file=sys.stderr)
        return 2
    print(f"{cfg.source}: ok")
    return 0
