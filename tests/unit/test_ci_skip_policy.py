"""The skip policy of tests/conftest.py, run on a throwaway test file by a real pytest subprocess:
under CI a skip fails unless marked allow_skip(reason=...); outside CI a skip stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = '''
import pytest

def test_passes():
    pass

def test_skips():
    pytest.skip("peer missing")

@pytest.mark.allow_skip(reason="needs a GPU, never in CI")
def test_allowed_skip():
    pytest.skip("no GPU")

@pytest.mark.allow_skip(reason="")
def test_empty_reason_is_not_an_allowance():
    pytest.skip("no reason given")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_xfails():
    raise AssertionError
'''


def run(tmp_path: Path, ci: str | None) -> str:
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403\n"
                                          "from tests.conftest import pytest_configure, pytest_make_collect_report, "
                                          "pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    res = subprocess.run([sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "-o", "addopts=", "--rootdir", str(tmp_path), str(tmp_path)],
                         capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120)
    return res.stdout + res.stderr


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_an_unmarked_skip_fails(tmp_path: Path, ci: str) -> None:
    out = run(tmp_path, ci)
    assert "2 failed, 1 passed, 1 skipped, 1 xfailed" in out, out
    assert "skipped under CI without an allow_skip(reason=...) marker: peer missing" in out


def test_outside_ci_skips_stay_skips(tmp_path: Path) -> None:
    out = run(tmp_path, None)
    assert "1 passed, 3 skipped, 1 xfailed" in out, out


def test_module_level_skip_fails_under_ci(tmp_path: Path) -> None:
    (tmp_path / "test_mod.py").write_text('import pytest\npytest.importorskip("no_such_module_anywhere")\n')
    out = run(tmp_path, "true")
    assert "module skipped under CI" in out and "no_such_module_anywhere" in out, out
