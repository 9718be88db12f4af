"""`spoofwatch outbox list | replay | purge` as an operator runs them, on a real outbox file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from daemon.alerts.outbox import Endpoint, Outbox
from daemon.clock import SystemClock
from daemon.config import WebhookConfig


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon.cli", "outbox", "--config", str(cfg), *args],
                          capture_output=True, text=True)


def test_list_replay_purge(tmp_path: Path) -> None:
    db = tmp_path / "o.sqlite3"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[outbox]\npath = "{db}"\n')
    ep = Endpoint.from_config(WebhookConfig(url="http://127.0.0.1:9/x"))
    ob = Outbox(db, SystemClock())
    ob.register_endpoints([ep])
    dead = ob.add("call.spoof_detected", {"leg": "inbound"}, endpoints=[ep], occurred_at=1_700_000_000.0)
    done = ob.add("call.summary", {}, endpoints=[ep], occurred_at=1_700_000_100.0)
    pending = ob.add("call.summary", {}, endpoints=[ep], occurred_at=1_700_000_200.0)
    rows = {r["event_id"]: r for r in ob.list_deliveries()}
    from daemon.alerts.outbox import Delivery

    def delivery(event_id: str) -> Delivery:
        return Delivery(event_id, ep.key, rows[event_id]["type"], b"", 0, None, 0.0)

    ob.mark_dead(delivery(dead), 500, "HTTP 500")
    ob.mark_delivered(delivery(done), 204)
    ob.close()

    res = cli(cfg, "list", "--json")
    assert res.returncode == 0, res.stderr
    listed = {json.loads(line)["event_id"]: json.loads(line)["state"] for line in res.stdout.splitlines()}
    assert listed == {dead: "dead", done: "delivered", pending: "pending"}
    assert "dead=1" in res.stderr
    res = cli(cfg, "list", "--state", "dead")
    assert res.returncode == 0 and dead in res.stdout and done not in res.stdout and "HTTP 500" in res.stdout

    assert cli(cfg, "replay", dead).returncode == 0
    assert cli(cfg, "replay", "msg_nope").returncode == 1
    assert cli(cfg, "replay").returncode == 2
    assert cli(cfg, "replay", "--since", "2023-11-14T22:13:00Z").returncode == 1  # nothing dead any more
    res = cli(cfg, "purge", "--delivered-before", "4102444800")  # year 2100: everything delivered so far
    assert res.returncode == 0 and "1 delivered" in res.stdout
    assert cli(cfg, "purge", "--delivered-before", "yesterday").returncode == 2
    again = Outbox(db, SystemClock())
    assert again.counts() == {"pending": 2, "delivered": 0, "dead": 0, "disabled": 0}
    again.close()


def test_missing_outbox_and_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[outbox]\npath = "{tmp_path / "none.sqlite3"}"\n')
    assert cli(cfg, "list").returncode == 2
    cfg.write_text("[outbox]\npaht = 1\n")
    res = cli(cfg, "list")
    assert res.returncode == 2 and "unknown key 'paht'" in res.stderr


def test_every_worker_partition_is_read_and_path_picks_one(tmp_path: Path) -> None:
    """`[process] workers = 2` leaves outbox-0 and outbox-1 beside the configured file: list shows both,
    replay finds an event in whichever holds it, `--path` reads one file."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n')
    ep = Endpoint.from_config(WebhookConfig(url="http://127.0.0.1:9/x?token=secret"))
    ids = []
    for n in (0, 1):
        ob = Outbox(tmp_path / f"outbox-{n}.sqlite3", SystemClock())
        ob.register_endpoints([ep])
        ids.append(ob.add("call.summary", {"worker": n}, endpoints=[ep], occurred_at=1_700_000_000.0 + n))
        ob.close()
    res = cli(cfg, "list", "--json")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(r["event_id"], r["outbox"]) for r in rows] == [(ids[1], "outbox-1.sqlite3"), (ids[0], "outbox-0.sqlite3")]
    assert "pending=2" in res.stderr and all("secret" not in r["url"] for r in rows)
    assert cli(cfg, "replay", ids[1]).returncode == 0  # found in the second partition
    one = subprocess.run([sys.executable, "-m", "daemon.cli", "outbox", "--path", str(tmp_path / "outbox-0.sqlite3"),
                          "list", "--json"], capture_output=True, text=True)
    assert one.returncode == 0 and [json.loads(line)["event_id"] for line in one.stdout.splitlines()] == [ids[0]]
