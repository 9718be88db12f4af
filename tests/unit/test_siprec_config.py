"""[ingest.siprec]: defaults, the checks that name the key, and the banner line."""

from __future__ import annotations

import pytest

from daemon.config import ConfigError, parse_config
from daemon.ingests import banner_lines, ingest_limits


def test_off_by_default_loopback_only() -> None:
    sip = parse_config({}).ingest.siprec
    assert not sip.enabled and sip.allowed_networks == ["127.0.0.0/8", "::1/128"]


def test_enabled_without_the_rtp_ingest_is_refused_clearly() -> None:
    with pytest.raises(ConfigError, match=r"ingest.siprec.*\[ingest.rtp\] enabled = true"):
        parse_config({"ingest": {"siprec": {"enabled": True}}})


@pytest.mark.parametrize(("section", "message"), [
    ({"allowed_networks": ["10.0.0.0/8", "not-a-net"]}, "ingest.siprec.allowed_networks"),
    ({"listen_udp": "nohost"}, "ingest.siprec.listen_udp"),
    ({"enabled": True, "listen_udp": "", "listen_tcp": ""}, "all empty"),
    ({"listen_tls": "127.0.0.1:5061"}, "tls_cert_path and tls_key_path"),
])
def test_bad_values_name_the_key(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"ingest": {"rtp": {"enabled": True}, "siprec": section}})


def test_limit_and_banner() -> None:
    cfg = parse_config({"ingest": {"rtp": {"enabled": True},
                                   "siprec": {"enabled": True, "max_calls": 7, "allowed_networks": ["10.0.0.0/8"]}}})
    assert ingest_limits(cfg)["siprec"] == 7
    (line,) = [ln for ln in banner_lines(cfg, {"siprec_udp": 5060, "siprec_tcp": 5061}) if "SIPREC" in ln]
    assert "UDP 5060" in line and "TCP 5061" in line and "10.0.0.0/8" in line
