"""Inspect and repair the webhook outbox (the daemon may keep running: SQLite WAL allows it).

    spoofwatch outbox [--config PATH] list [--state pending|delivered|dead|disabled] [--limit N] [--json]
    spoofwatch outbox [--config PATH] replay ID         (make one event deliverable again)
    spoofwatch outbox [--config PATH] replay --since TIME   (every dead/disabled event since TIME)
    spoofwatch outbox [--config PATH] purge --delivered-before TIME
TIME is ISO-8601 (2026-11-23T10:00:00Z) or Unix seconds. Exit 0 ok, 1 nothing matched, 2 bad input."""

from __future__ import annotations

import argparse
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", help="config.toml whose [outbox] path to use (default: built-in)")
    sub = p.add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    lst = sub.add_parser("list", help="list deliveries, newest first")
    lst.add_argument("--state", choices=("pending", "delivered", "dead", "disabled"))
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    rep = sub.add_parser("replay", help="send an event again (dead, disabled or delivered)")
    rep.add_argument("event_id", nargs="?")
    rep.add_argument("--since", metavar="TIME", help="every dead or disabled event created since TIME")
    pur = sub.add_parser("purge", help="delete delivered events")
    pur.add_argument("--delivered-before", metavar="TIME", required=True)


def parse_time(value: str) -> float:
    from datetime import UTC, datetime

    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither ISO-8601 nor Unix seconds") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def main(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    from daemon.alerts.outbox import Outbox
    from daemon.alerts.redact import redact_url
    from daemon.clock import SystemClock
    from daemon.config import ConfigError, load_config
    from daemon.timefmt import iso

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"spoofwatch outbox: {exc}", file=sys.stderr)
        return 2
    path = Path(cfg.outbox.path)
    state_dir = os.environ.get("STATE_DIRECTORY")
    if state_dir and not path.is_absolute():
        path = Path(state_dir.split(":")[0]) / path
    if not path.exists():
        print(f"spoofwatch outbox: no outbox at {path}", file=sys.stderr)
        return 2
    outbox = Outbox(path, SystemClock())
    try:
        if args.outbox_command == "list":
            rows = outbox.list_deliveries(args.state, max(1, args.limit))
            for r in rows:
                r["url"] = redact_url(r["url"]) if r["url"] else r["url"]  # webhook URLs often carry a token
                if args.json:
                    print(json.dumps(r))
                else:
                    when = iso(r["created_at"])
                    print(f"{r['event_id']}  {r['type']:<20} {r['state']:<9} attempts={r['attempts']:<3} "
                          f"{when}  {r['url'] or r['endpoint']}  {r['last_error'] or ''}")
            counts = outbox.counts()
            print(" ".join(f"{k}={v}" for k, v in counts.items()), file=sys.stderr)
            return 0
        if args.outbox_command == "replay":
            if bool(args.event_id) == bool(args.since):
                print("spoofwatch outbox replay: give an event id or --since TIME", file=sys.stderr)
                return 2
            n = outbox.replay(args.event_id) if args.event_id else outbox.replay_since(parse_time(args.since))
            print(f"{n} deliveries pending again (a running daemon sends them within 30 s)")
            return 0 if n else 1
        n = outbox.purge_delivered_before(parse_time(args.delivered_before))
        print(f"{n} delivered events purged")
        return 0
    except ValueError as exc:
        print(f"spoofwatch outbox: {exc}", file=sys.stderr)
        return 2
    finally:
        outbox.close()
