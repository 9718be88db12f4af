"""Write config.toml from the schema in daemon/config.py: every key, its default and its documentation.

`python scripts/gen_config_toml.py` rewrites config.toml; `--check` exits 1 when config.toml is stale
(tests/unit/test_config.py runs it), so the documented file can never drift from what is validated.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.config import Config, WebhookConfig  # noqa: E402

HEADER = """\
# spoofwatch configuration. Every key is shown with its default; units are in the key names
# (_ms, _s, _bytes). Unknown keys, wrong types and out-of-range values are refused at start
# (`spoofwatch check-config config.toml` checks a file). Secrets never go in this file: the
# Behavioral Signals project id and API key come from the environment (SPOOFWATCH_CID,
# SPOOFWATCH_API_KEY) or systemd credentials, webhook secrets from the variables named by
# `secret_env`. Generated from daemon/config.py by scripts/gen_config_toml.py.
"""

WEBHOOK_EXAMPLE = """\
# Webhook endpoints: one [[webhook]] table each. Events: call.spoof_detected, call.summary,
# upstream.degraded, upstream.recovered. Example (uncomment, then export the secret):
#
# [[webhook]]
# url = "https://alerts.example.com/spoofwatch"   # http(s) URL the events are POSTed to
# secret_env = "SPOOFWATCH_WEBHOOK_SECRET"        # env var holding whsec_… (several, space-separated, to rotate)
# events = ["call.spoof_detected", "call.summary"] # [] or absent: all event types
# timeout_s = 15.0                                # request timeout
"""


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def limits(meta: typing.Mapping[str, Any]) -> str:
    parts = []
    if meta.get("choices"):
        parts.append("one of " + ", ".join(meta["choices"]))
    if meta.get("min") is not None or meta.get("max") is not None:
        parts.append(f"{meta.get('min')} to {meta.get('max')}")
    return f" [{'; '.join(parts)}]" if parts else ""


def section(obj: Any, name: str) -> list[str]:
    out: list[str] = []
    nested: list[tuple[str, Any]] = []
    doc = (type(obj).__doc__ or "").strip()
    body: list[str] = []
    for f in dataclasses.fields(obj):
        if f.metadata.get("internal"):
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            nested.append((f"{name}.{f.name}", value))
            continue
        for line in textwrap.wrap(f.metadata.get("help", "") + limits(f.metadata), 96):
            body.append(f"# {line}")
        body.append(f"{f.name} = {toml_value(value)}")
        body.append("")
    if body:
        out.append(f"[{name}]")
        if doc and not doc.startswith(type(obj).__name__):
            out.append(f"# {doc}")
        out.extend(body)
    for sub_name, sub in nested:
        out.extend(section(sub, sub_name))
    return out


def render() -> str:
    cfg = Config()
    lines = [HEADER]
    for f in dataclasses.fields(cfg):
        if f.metadata.get("internal") or f.name == "webhook":
            continue
        lines.extend(section(getattr(cfg, f.name), f.name))
    lines.append(WEBHOOK_EXAMPLE.rstrip())
    assert [x.name for x in dataclasses.fields(WebhookConfig)] == ["url", "secret_env", "events", "timeout_s"]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    opts = parser.parse_args()
    text = render()
    target = ROOT / "config.toml"
    if opts.check:
        if not target.exists() or target.read_text() != text:
            print("config.toml is stale: run `python scripts/gen_config_toml.py`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
