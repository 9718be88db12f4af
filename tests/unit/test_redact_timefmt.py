"""Webhook URLs are shown redacted everywhere; the alerts layer does not import the policy layer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from daemon.alerts.redact import redact_text, redact_url
from daemon.timefmt import iso

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.example.com/alerts?token=s3cr3t", "https://hooks.example.com/alerts?…"),
    ("https://user:s3cr3t@hooks.example.com:8443/a/b?x=1#frag", "https://…@hooks.example.com:8443/a/b?…#…"),
    ("http://127.0.0.1:9/hook", "http://127.0.0.1:9/hook"),
    ("http://[::1]:8080/p?k=v", "http://[::1]:8080/p?…"),
    ("https://h.example/p?", "https://h.example/p"),
    ("https://h.example:notaport/x?t=s3cr3t", "…"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cr3t" not in redact_url(url)


def test_redact_text_hides_the_url_inside_an_error() -> None:
    url = "https://h.example/x?token=s3cr3t"
    assert redact_text(f"Cannot connect to {url}: refused", url) == "Cannot connect to https://h.example/x?…: refused"


def test_iso() -> None:
    assert iso(1_700_000_000.5) == "2023-11-14T22:13:20.500Z"


def test_alerts_do_not_import_policy() -> None:
    for path in sorted((ROOT / "daemon" / "alerts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("daemon.policy") for n in names), f"{path.name} imports {names}"
