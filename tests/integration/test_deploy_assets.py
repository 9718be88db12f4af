"""Dashboard and alert rules: valid structure, every metric they query exists in the exposition,
`promtool check rules` and `promtool test rules` pass."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from daemon.config import Config
from daemon.ops.metrics import Metrics
from daemon.workers.supervisor import WorkerSupervisor

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "spoofwatch-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "spoofwatch-rules.yml"
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "le", "and", "or", "bool",
                "delta", "clamp_min", "label_values", "instance", "without", "on", "ignoring", "offset"}


def exposed_names() -> set[str]:
    """Series names every family exports once it has samples (labelled families have none until used)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum"), "info": ("_info",)}
    # the daemon's families, and the multi-worker supervisor's own (served in its merged /metrics)
    families = [*Metrics().registry.collect(), *WorkerSupervisor(Config(), config_path=None, count=2).own_metrics()]
    return {f.name + sfx for f in families for sfx in suffixes.get(f.type, ("",))}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return {t for t in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
            if t.startswith("spoofwatch") and ":" not in t and t not in PROMQL_WORDS}


def test_dashboard_structure_and_queries() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 42 and dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exposed = exposed_names()
    queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    assert len(queries) >= 15
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for needed in ("simulated", "chunk latency", "result latency", "alert latency", "webhook", "drops", "active calls"):
        assert needed in titles
    for q in queries:
        for name in metric_names(q):
            assert name in exposed, f"dashboard queries {name}, which the daemon does not export"
    for p in dash["panels"]:
        gp = p["gridPos"]
        assert gp["x"] + gp["w"] <= 24


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_rules_check_and_unit_tests() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", "spoofwatch-rules.test.yml"], cwd=RULES.parent,
                          capture_output=True, text=True)
    assert unit.returncode == 0 and "SUCCESS" in unit.stdout, unit.stdout + unit.stderr


def test_rule_metrics_exist() -> None:
    exposed = exposed_names()
    exprs = re.findall(r"expr: (.+)", RULES.read_text()) + re.findall(r"expr: \|\n((?:\s{10}.+\n)+)", RULES.read_text())
    assert exprs
    for expr in exprs:
        for name in metric_names(expr):
            assert name in exposed, f"rule uses {name}, which the daemon does not export"
    assert generate_latest(Metrics().registry)
