"""Run the daemon: listens for media forks (Twilio websockets, RTP), streams each leg to the
deepfake detector (or to the embedded simulator on the defaults), and delivers signed webhooks.
Stops cleanly on SIGTERM/SIGINT (drains open calls), reloads policy/webhooks/limits on SIGHUP."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="config.toml (default: built-in defaults, embedded simulator)")


def main(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from daemon.app import Daemon
    from daemon.config import ConfigError, load_config
    from daemon.ops.logconf import configure_logging

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"spoofwatch: {exc}", file=sys.stderr)
        return 2
    stop_logging = configure_logging(cfg.daemon.log_format, cfg.daemon.log_level, background=True)

    async def _run() -> int:
        return await Daemon(cfg, config_path=args.config, tune_gc=True).run()

    try:
        return asyncio.run(_run())
    except ConfigError as exc:
        logging.getLogger("spoofwatch").error("%s", exc)
        return 2
    except OSError as exc:
        logging.getLogger("spoofwatch").error("cannot start: %s", exc)
        return 1
    finally:
        stop_logging()  # the last lines (e.g. "stopped") are written before the process exits
