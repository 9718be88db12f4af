"""Run the daemon: listens for media forks (Twilio websockets, RTP, WHIP), streams each leg to the
deepfake detector (or to the embedded simulator on the defaults), and delivers signed webhooks.
Stops cleanly on SIGTERM/SIGINT (drains open calls), reloads policy/webhooks/limits on SIGHUP.
With `[process] workers` above 1 this process is the supervisor of that many worker processes."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="config.toml (default: built-in defaults, embedded simulator)")
    # set by the supervisor for the processes it starts; not for operators
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--shared", action="append", default=[], metavar="NAME=HOST:PORT", help=argparse.SUPPRESS)


def main(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from daemon.config import ConfigError, load_config
    from daemon.ops.logconf import configure_logging
    from daemon.workers.plan import WorkerRole, worker_count

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"spoofwatch: {exc}", file=sys.stderr)
        return 2
    count = args.workers if args.worker is not None else worker_count(cfg.process.workers)
    role: WorkerRole | None = None
    if args.worker is not None:
        import os

        from daemon.workers.orphan import SUPERVISOR_PID_ENV, die_with_supervisor

        parent = os.environ.get(SUPERVISOR_PID_ENV, "")
        if parent.isdigit() and not die_with_supervisor(int(parent)):
            print("spoofwatch: the supervisor is gone; worker not started", file=sys.stderr)
            return 1
        if not (count and 0 <= args.worker < count):
            print("spoofwatch: --worker must be below --workers", file=sys.stderr)
            return 2
        try:
            role = WorkerRole(args.worker, count, dict(item.split("=", 1) for item in args.shared))
            cfg = role.apply(cfg)
        except ValueError as exc:
            print(f"spoofwatch: {exc}", file=sys.stderr)
            return 2
    stop_logging = configure_logging(cfg.daemon.log_format, cfg.daemon.log_level, background=True)

    async def _run() -> int:
        if args.worker is None and count > 1:
            # the supervisor imports no gRPC: its workers are fresh interpreters, nothing crosses a fork
            from daemon.workers.supervisor import WorkerSupervisor

            return await WorkerSupervisor(cfg, config_path=args.config, count=count).run()
        from daemon.app import Daemon

        return await Daemon(cfg, config_path=args.config, tune_gc=True, worker=role).run()

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
