"""The shipped unit: `systemd-analyze verify` clean on stderr, security exposure ≤ 2.0, Type=notify."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "spoofwatch.service"
pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def local_copy(tmp_path: Path) -> Path:
    """verify needs ExecStart to exist: point it at a stand-in executable."""
    exe = tmp_path / "spoofwatch"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    unit = tmp_path / "spoofwatch.service"
    unit.write_text(UNIT.read_text().replace("/opt/spoofwatch/.venv/bin/spoofwatch", str(exe)))
    return unit


def test_verify_has_no_warnings(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "verify", str(local_copy(tmp_path))], capture_output=True, text=True)
    # verify exits 0 on unknown keys and bad values: its warnings are on stderr
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr


def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20",
                          str(local_copy(tmp_path))], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    match = re.search(r"Overall exposure level for spoofwatch\.service: ([0-9.]+)", res.stdout)
    assert match and float(match.group(1)) <= 2.0, res.stdout[-500:]


def test_unit_contract() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "StateDirectory=spoofwatch", "WatchdogSec=30",
                 "LoadCredential=SPOOFWATCH_API_KEY"):
        assert line in text
    stop = int(re.search(r"TimeoutStopSec=(\d+)", text).group(1))  # type: ignore[union-attr]
    from daemon.config import DaemonConfig

    d = DaemonConfig()
    assert stop > d.drain_timeout_s + d.final_results_timeout_s + 5
