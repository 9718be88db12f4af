"""Inspect and repair the webhook outbox (the daemon may keep running: SQLite WAL allows it).

With `[process] workers` above 1 each worker has its own partition beside the configured file
(`<stem>-<n><suffix>`): every command reads and changes all of them. `--path FILE` picks one file.

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
    p.add_argument("--path", metavar="FILE", help="one outbox file (instead of the configured one and its partitions)")
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
    from daemon.workers.plan import outbox_partitions

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"spoofwatch outbox: {exc}", file=sys.stderr)
        return 2
    path = Path(cfg.outbox.path)
    state_dir = os.environ.get("STATE_DIRECTORY")
    if state_dir and not path.is_absolute():
        path = Path(state_dir.split(":")[0]) / path
    paths = [Path(args.path)] if args.path else outbox_partitions(path)
    if not paths or not all(p.exists() for p in paths):
        print(f"spoofwatch outbox: no outbox at {args.path or path}", file=sys.stderr)
        return 2
    outboxes = [Outbox(p, SystemClock()) for p in paths]
    try:
        if args.outbox_command == "list":
            limit = max(1, args.limit)
            rows = []
            for p, outbox in zip(paths, outboxes, strict=True):
                for r in outbox.list_deliveries(args.state, limit):
                    r["outbox"] = p.name
                    rows.append(r)
            rows = sorted(rows, key=lambda r: r["created_at"], reverse=True)[:limit]
            for r in rows:
                r["url"] = redact_url(r["url"]) if r["url"] else r["url"]  # webhook URLs often carry a token
                if args.json:
                    print(json.dumps(r))
                else:
                    when = iso(r["created_at"])
                    where = f"  [{r['outbox']}]" if len(paths) > 1 else ""
                    print(f"{r['event_id']}  {r['type']:<20} {r['state']:<9} attempts={r['attempts']:<3} "
                          f"{when}  {r['url'] or r['endpoint']}  {r['last_error'] or ''}{where}")
            totals: dict[str, int] = {}
            for outbox in outboxes:
                for k, v in outbox.counts().items():
                    totals[k] = totals.get(k, 0) + v
            print(" ".join(f"{k}={v}" for k, v in totals.items()), file=sys.stderr)
            return 0
        if args.outbox_command == "replay":
            if bool(args.event_id) == bool(args.since):
                print("spoofwatch outbox replay: give an event id or --since TIME", file=sys.stderr)
                return 2
            if args.event_id:
                n = sum(outbox.replay(args.event_id) for outbox in outboxes)
            else:
                since = parse_time(args.since)
                n = sum(outbox.replay_since(since) for outbox in outboxes)
            print(f"{n} deliveries pending again (a running daemon sends them within 30 s)")
            return 0 if n else 1
        before = parse_time(args.delivered_before)
        n = sum(outbox.purge_delivered_before(before) for outbox in outboxes)
        print(f"{n} delivered events purged")
        return 0
    except ValueError as exc:
        print(f"spoofwatch outbox: {exc}", file=sys.stderr)
        return 2
    finally:
        for outbox in outboxes:
            outbox.close()
