"""[ingest.rtp] defaults and cross-checks: the port range stays out of the kernel's ephemeral range,
auto_calls is off, codec maps are checked without importing any ingest."""

from __future__ import annotations

import subprocess
import sys

import pytest

from daemon.config import ConfigError, RtpIngestConfig, parse_config
from daemon.ingest.rtp.sockets import ephemeral_range, overlaps


def test_default_port_range_is_outside_the_ephemeral_range() -> None:
    cfg = RtpIngestConfig()
    assert (cfg.port_min, cfg.port_max) == (20000, 20999) and cfg.auto_calls is False
    assert not overlaps((cfg.port_min, cfg.port_max), (32768, 60999))  # Linux's default
    here = ephemeral_range()
    if here is not None:  # and this machine's
        assert not overlaps((cfg.port_min, cfg.port_max), here), here


def test_overlaps() -> None:
    assert overlaps((1, 5), (5, 9)) and overlaps((3, 4), (1, 9)) and not overlaps((1, 4), (5, 9))


def test_bad_codec_map_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.rtp\.dynamic_payload_types: unknown codec 'speex'"):
        parse_config({"ingest": {"rtp": {"dynamic_payload_types": ["97 speex/8000"]}}})


def test_config_validation_imports_no_ingest() -> None:
    code = ("import sys; from daemon.config import parse_config; "
            "parse_config({'ingest': {'rtp': {'dynamic_payload_types': ['97 opus/48000/2']}}}); "
            "print(sorted(m for m in sys.modules if m.startswith('daemon.ingest')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
