"""config.toml validation: unknown keys, wrong types, out-of-range values, cross checks, secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import (
    Config,
    ConfigError,
    iter_documented_keys,
    load_config,
    parse_config,
    read_secret,
    upstream_credentials,
)

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_is_valid_and_equals_defaults() -> None:
    cfg = load_config(ROOT / "config.toml")
    assert cfg.upstream.target == "embedded"
    assert {k: v for k, v in vars(cfg).items() if k != "source"} == {
        k: v for k, v in vars(Config()).items() if k != "source"
    }


def test_shipped_config_is_generated_from_schema() -> None:
    rc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_config_toml.py"), "--check"],
                        capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr


def test_every_key_documented_with_unit_in_name() -> None:
    text = (ROOT / "config.toml").read_text()
    for key, help_text in iter_documented_keys():
        leaf = key.rsplit(".", 1)[-1]
        assert help_text, key
        if key.startswith("webhook."):
            assert f"# {leaf} = " in text or f"# {leaf}" in text, key
        else:
            assert f"\n{leaf} = " in text, key
    # durations and sizes carry their unit
    for key, _ in iter_documented_keys():
        leaf = key.rsplit(".", 1)[-1]
        if any(w in leaf for w in ("timeout", "latency", "after", "retention", "interval")):
            assert leaf.endswith(("_ms", "_s")), key


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[policy]\nspoofed_treshold = 0.5\n", "policy: unknown key 'spoofed_treshold'"),
        ("[nope]\nx = 1\n", "unknown key 'nope'"),
        ("[policy]\nspoofed_threshold = 1.5\n", "policy.spoofed_threshold: must be between 0 and 1, got 1.5"),
        ("[policy]\nconsecutive_segments = \"2\"\n", "policy.consecutive_segments: must be an integer"),
        ("[policy]\nconsecutive_segments = true\n", "policy.consecutive_segments: must be an integer"),
        ("[upstream]\ntls = true\n", "upstream.tls: must be a string"),
        ("[upstream]\ntls = \"yes\"\n", "upstream.tls: must be one of 'auto', 'on', 'off'"),
        ("[simulator]\ntls_cert_file = \"c.pem\"\n", "simulator.tls_cert_file and simulator.tls_key_file: set both"),
        ("[upstream]\ntls = \"on\"\n", "upstream.tls: \"on\" with target \"embedded\" needs simulator.tls_cert_file"),
        ("[daemon]\nlog_format = \"xml\"\n", "daemon.log_format: must be one of"),
        ("[upstream]\ntarget = \"nowhere\"\n", "upstream.target: must be \"embedded\" or \"host:port\""),
        ("[http]\nlisten = \"localhost\"\n", "http.listen: 'localhost' is not HOST:PORT"),
        ("[[webhook]]\nurl = \"ftp://x\"\n", "webhook[0].url: must be an http:// or https:// URL"),
        ("[[webhook]]\nurl = \"https://x\"\nevents = [\"call.nope\"]\n", "unknown event type 'call.nope'"),
        ("[[webhook]]\nurl = \"https://x\"\nsecret = \"whsec_x\"\n", "webhook[0]: unknown key 'secret'"),
        ("[ingest.rtp]\nport_min = 5000\nport_max = 5000\n", "ingest.rtp.port_max: must be greater"),
        ("[ingest]\ntwilio = 3\n", "ingest.twilio: must be a table"),
        ("daemon = [1]\n", "daemon: must be a table"),
    ],
)
def test_bad_values_refused_with_file_and_key(tmp_path: Path, toml: str, needle: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(err.value).startswith(f"{p}: ")
    assert needle in str(err.value)


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text("[policy\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_good_values_and_int_for_float() -> None:
    cfg = parse_config({"policy": {"spoofed_threshold": 1},
                        "upstream": {"target": "streaming.behavioralsignals.com:443", "tls": "on"},
                        "webhook": [{"url": "https://h/x", "events": ["call.summary"]}]})
    assert cfg.policy.spoofed_threshold == 1.0 and isinstance(cfg.policy.spoofed_threshold, float)
    assert cfg.upstream.tls == "on" and cfg.webhook[0].events == ["call.summary"]
    with pytest.raises(AttributeError):
        cfg.policy.spoofed_threshold = 0.3  # type: ignore[misc]


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = subprocess.run([sys.executable, "-m", "daemon.cli", "check-config", str(ROOT / "config.toml")],
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy]\nspoofed_threshold = -1\n")
    res = subprocess.run([sys.executable, "-m", "daemon.cli", "check-config", str(bad)], capture_output=True, text=True)
    assert res.returncode == 2
    assert str(bad) in res.stderr and "policy.spoofed_threshold" in res.stderr and "between 0 and 1" in res.stderr


def test_credentials_from_env_and_systemd_credentials(tmp_path: Path) -> None:
    assert upstream_credentials({"SPOOFWATCH_CID": "12", "SPOOFWATCH_API_KEY": "k"}).cid == 12
    with pytest.raises(ConfigError, match="SPOOFWATCH_API_KEY"):
        upstream_credentials({"SPOOFWATCH_CID": "12"})
    with pytest.raises(ConfigError, match="must be an integer"):
        upstream_credentials({"SPOOFWATCH_CID": "abc", "SPOOFWATCH_API_KEY": "k"})
    (tmp_path / "SPOOFWATCH_API_KEY").write_text("from-cred\n")
    assert read_secret("SPOOFWATCH_API_KEY", {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "from-cred"
