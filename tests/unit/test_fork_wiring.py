"""The fork ingests' config and wiring: the moved Twilio keys, per-dialect sections and their checks,
secrets read at start, admission limits, banner lines and the dashboard's ingest variable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from daemon.clock import FakeClock
from daemon.config import ConfigError, parse_config
from daemon.configingest import WEBSOCKET_FORKS, websocket_enabled
from daemon.ingest.websocket.dialects import fork_dialects
from daemon.ingest.websocket.listener import route_matches
from daemon.ingests import banner_lines, ingest_limits

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("key", "where"), [("listen", "[ingest.websocket] listen"),
                                            ("max_frame_bytes", "[ingest.websocket] max_frame_bytes")])
def test_moved_twilio_keys_say_where_they_went(key: str, where: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"ingest.twilio.{key}: moved to {where}")):
        parse_config({"ingest": {"twilio": {key: "127.0.0.1:8080" if key == "listen" else 4096}}})


def test_dialect_defaults_are_off_with_their_paths() -> None:
    ing = parse_config({}).ingest
    assert [getattr(ing, n).path for n in WEBSOCKET_FORKS] == [
        "/telnyx", "/plivo", "/exotel", "/vonage", "/freeswitch", "/jambonz", "/asterisk", "/audiohook"]
    assert not any(getattr(ing, n).enabled for n in WEBSOCKET_FORKS) and not ing.audiosocket.enabled
    assert websocket_enabled(ing)  # Twilio is on by default
    assert not websocket_enabled(parse_config({"ingest": {"twilio": {"enabled": False}}}).ingest)
    assert websocket_enabled(parse_config({"ingest": {"twilio": {"enabled": False},
                                                      "jambonz": {"enabled": True}}}).ingest)


@pytest.mark.parametrize(("ingest", "message"), [
    ({"plivo": {"enabled": True, "path": "/twilio"}}, "overlaps ingest.twilio.path"),
    ({"plivo": {"enabled": True, "path": "/twilio/x"}}, "overlaps"),
    ({"vonage": {"path": "vonage"}}, "ingest.vonage.path: must be a path"),
    ({"freeswitch": {"sample_rate_hz": 11025}}, "ingest.freeswitch.sample_rate_hz"),
    ({"freeswitch": {"mix_type": "quad"}}, "ingest.freeswitch.mix_type"),
    ({"audiosocket": {"enabled": True, "listen": "127.0.0.1:8080"}}, "also ingest.websocket.listen"),
])
def test_dialect_checks_name_the_key(ingest: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"ingest": ingest})


def test_secrets_are_read_at_start_and_a_missing_one_names_its_variable() -> None:
    ing = parse_config({"ingest": {"telnyx": {"enabled": True, "auth_token_env": "T_TOKEN"},
                                   "plivo": {"enabled": True, "secret_header": "token"}}}).ingest
    with pytest.raises(ConfigError, match="T_TOKEN"):
        fork_dialects(ing, {}, FakeClock())
    with pytest.raises(ConfigError, match=r"ingest\.plivo: set both"):
        fork_dialects(ing, {"T_TOKEN": "x"}, FakeClock())
    ah = parse_config({"ingest": {"audiohook": {"enabled": True}}}).ingest
    with pytest.raises(ConfigError, match="SPOOFWATCH_AUDIOHOOK_API_KEY"):
        fork_dialects(ah, {}, FakeClock())
    with pytest.raises(ConfigError, match="not base64"):
        fork_dialects(ah, {"SPOOFWATCH_AUDIOHOOK_API_KEY": "k", "SPOOFWATCH_AUDIOHOOK_CLIENT_SECRET": "%%"},
                      FakeClock())
    (dialect,) = fork_dialects(ah, {"SPOOFWATCH_AUDIOHOOK_API_KEY": "k"}, FakeClock())
    assert dialect.name == "audiohook" and dialect.path == "/audiohook"


def test_subprotocols_and_deflate_per_dialect() -> None:
    ing = parse_config({"ingest": {"freeswitch": {"enabled": True, "permessage_deflate": True},
                                   "jambonz": {"enabled": True}, "telnyx": {"enabled": True}}}).ingest
    by_name = {d.name: d for d in fork_dialects(ing, {}, FakeClock())}
    assert by_name["freeswitch"].subprotocols[0] == "audio.drachtio.org" and by_name["freeswitch"].compression
    assert by_name["jambonz"].subprotocols == ("audio.jambonz.org", "audio.drachtio.org")
    assert not by_name["jambonz"].compression and not by_name["telnyx"].compression
    assert by_name["telnyx"].subprotocols == ()


def test_route_paths_match_themselves_and_below() -> None:
    assert route_matches("/freeswitch", "/freeswitch") and route_matches("/freeswitch", "/freeswitch/uuid-1")
    assert not route_matches("/freeswitch", "/freeswitchx") and not route_matches("/plivo", "/")


def test_limits_and_banner_name_every_enabled_dialect() -> None:
    cfg = parse_config({"ingest": {"websocket": {"listen": "127.0.0.1:0"},
                                   **{n: {"enabled": True} for n in WEBSOCKET_FORKS if n != "audiohook"},
                                   "audiosocket": {"enabled": True, "listen": "127.0.0.1:0"}}})
    limits = ingest_limits(cfg)
    assert set(WEBSOCKET_FORKS) | {"twilio", "rtp", "whip", "audiosocket"} <= set(limits)
    lines = "\n".join(banner_lines(cfg, {"websocket": 8080, "twilio": 8080, "audiosocket": 9092}))
    for path in ("/twilio", "/telnyx", "/plivo", "/exotel", "/vonage", "/freeswitch", "/jambonz", "/asterisk"):
        assert f"ws://127.0.0.1:8080{path}" in lines
    assert "/audiohook" not in lines and "127.0.0.1:9092" in lines


def test_dashboard_ingest_variable_lists_every_ingest() -> None:
    dash = json.loads((ROOT / "deploy" / "grafana" / "spoofwatch-dashboard.json").read_text())
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "ingest"]
    listed = set(var["query"].split(","))
    assert set(ingest_limits(parse_config({}))) <= listed
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "by (ingest" in t["expr"]]
    assert exprs and all('ingest=~"$ingest"' in e for e in exprs)
