"""deploy/kubernetes: every manifest validates against the Kubernetes schemas (kubernetes-validate ships
them, offline), `kubectl kustomize` renders the whole set, and the pod spec agrees with the daemon it runs:
probe paths it serves, a grace period longer than its drain, the systemd unit's hardening, a config file
the daemon accepts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from daemon.config import load_config

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"
#: custom resources: no schema ships with kubernetes-validate; their fields are checked by hand below
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[dict[str, Any]]:
    kust = documents(KUBE / "kustomization.yaml")[0]
    return [doc for name in kust["resources"] for doc in documents(KUBE / name)]


def by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in manifests() if d["kind"] == kind]
    return doc


def test_every_resource_validates_against_the_kubernetes_schema() -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"StatefulSet", "Service", "PodDisruptionBudget",
                                         "HorizontalPodAutoscaler", "ServiceMonitor", "ConfigMap"}
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_refused_by_the_validator() -> None:
    """The validator is not a no-op: a misspelt field in the pod spec fails."""
    sts = by_kind("StatefulSet")
    sts["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_service_monitor_scrapes_the_metrics_port() -> None:
    sm = by_kind("ServiceMonitor")
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    ports = {p["name"] for d in manifests() if d["kind"] == "Service" for p in d["spec"]["ports"]}
    assert endpoint["port"] in ports


def test_pod_spec_matches_the_daemon() -> None:
    cfg = load_config(KUBE / "config.toml")
    pod = by_kind("StatefulSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # the whole drain fits in the grace period: open calls, their final results, the outbox flush
    needed = cfg.daemon.drain_timeout_s + cfg.daemon.final_results_timeout_s + 5
    assert pod["terminationGracePeriodSeconds"] > needed
    assert "kill -TERM 1" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    # the systemd unit's hardening, in Kubernetes words
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # the listeners bind inside the pod on the ports the container declares
    declared = {p["containerPort"] for p in container["ports"]}
    for listen in (cfg.http.listen, cfg.ingest.websocket.listen, cfg.ingest.whip.listen):
        host, port = listen.rsplit(":", 1)
        assert host == "0.0.0.0" and int(port) in declared
    # the outbox is on the pod's own volume; secrets are files read like systemd credentials
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert not Path(cfg.outbox.path).is_absolute() and env["STATE_DIRECTORY"] == mounts["outbox"]
    assert env["CREDENTIALS_DIRECTORY"] == mounts["credentials"]
    claims = by_kind("StatefulSet")["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["outbox"]


def test_hpa_scales_the_statefulset_on_active_calls() -> None:
    hpa = by_kind("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == by_kind("StatefulSet")["metadata"]["name"]
    names = [m.get("pods", {}).get("metric", {}).get("name") for m in hpa["spec"]["metrics"]]
    assert "spoofwatch_calls_active_per_pod" in names
    rules = yaml.safe_load(by_kind("ConfigMap")["data"]["config.yaml"])["rules"]
    assert any(r["name"]["as"] == "spoofwatch_calls_active_per_pod" for r in rules)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (kustomize) not installed")
def test_kustomize_renders_the_set() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60, check=True)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("ConfigMap") == 2 and "StatefulSet" in kinds
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    generated = next(d for d in docs if d["kind"] == "ConfigMap" and "config.toml" in d.get("data", {}))
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    # the generator's hashed name is wired into the pod, so a config change rolls the pods
    assert volumes["config"]["configMap"]["name"] == generated["metadata"]["name"] != "spoofwatch-config"
