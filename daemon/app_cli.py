"""Run the daemon: listens for media forks (Twilio websockets, RTP, WHIP), streams each leg to the
deepfake detector (or to the embedded simulator on the defaults), and delivers signed webhooks.
Stops cleanly on SIGTERM/SIGINT (drains open calls), reloads policy/webhooks/limits on SIGHUP.
With `[process] workers` above 1 this process is the supervisor of that many worker processes."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable

#: overrides `[daemon] event_loop` (auto, uvloop, asyncio), e.g. to compare the two loops
EVENT_LOOP_ENV = "SPOOFWATCH_EVENT_LOOP"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="config.toml (default: built-in defaults, embedded simulator)")
    # set by the supervisor for the processes it starts; not for operators
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--shared", action="append", default=[], metavar="NAME=HOST:PORT", help=argparse.SUPPRESS)


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop for `[daemon] event_loop` (SPOOFWATCH_EVENT_LOOP overrides it): None for asyncio's
    own, uvloop's factory for "uvloop", and for "auto" uvloop's when it can be imported."""
    import os

    from daemon.config import ConfigError

    choice = os.environ.get(EVENT_LOOP_ENV, "").strip() or choice
    if choice not in ("auto", "uvloop", "asyncio"):
        raise ConfigError(f"{EVENT_LOOP_ENV}={choice!r}: expected auto, uvloop or asyncio")
    if choice == "asyncio" or sys.platform == "win32":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("[daemon] event_loop is \"uvloop\" but uvloop is not installed "
                              "(pip install uvloop, or choose \"auto\" or \"asyncio\")") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(args: argparse.Namespace) -> int:
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
        loop_factory = event_loop_factory(cfg.daemon.event_loop)
    except ConfigError as exc:
        print(f"spoofwatch: {exc}", file=sys.stderr)
        stop_logging()
        return 2
    logging.getLogger("spoofwatch").info("event loop: %s", "uvloop" if loop_factory is not None else "asyncio")
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(_run())
    except ConfigError as exc:
        logging.getLogger("spoofwatch").error("%s", exc)
        return 2
    except OSError as exc:
        logging.getLogger("spoofwatch").error("cannot start: %s", exc)
        return 1
    finally:
        stop_logging()  # the last lines (e.g. "stopped") are written before the process exits
