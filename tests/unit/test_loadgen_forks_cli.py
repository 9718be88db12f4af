"""`spoofwatch loadgen <dialect>` argument handling: every dialect parses with the real CLI parser
and builds the frame builder the options describe (bundled clips, no socket)."""

from __future__ import annotations

import json

import pytest

from daemon.cli import build_parser, main
from daemon.loadgen.forks_cli import DIALECTS, build
from daemon.loadgen.forks_frames import Exotel, Plivo, Telnyx, Vonage
from daemon.loadgen.forks_frames_pbx import AsteriskWs, AudioSocket, FreeSwitch, Jambonz

KEY = "0c9a4e0e-6a43-4a8c-9a5b-6a0d8d1e2f30"


def parse(*argv: str) -> object:
    return build_parser().parse_args(["loadgen", *argv])


@pytest.mark.parametrize("dialect", sorted(DIALECTS))
def test_every_dialect_is_registered(dialect: str) -> None:
    target = ["--port", "9"] if dialect == "audiosocket" else ["--url", f"ws://127.0.0.1:9/{dialect}"]
    args = parse(dialect, *target, "--calls", "3", "--fast", "--ramp-s", "2")
    assert vars(args)["loadgen_protocol"] == dialect and vars(args)["calls"] == 3


def test_telnyx_options() -> None:
    args = parse("telnyx", "--url", "ws://h/telnyx", "--codec", "L16", "--rate", "16000", "--reorder", "3",
                 "--auth-token", "t", "--track", "inbound", "--param", "a=b", "--dtmf", "1")
    d = build("telnyx", args)  # type: ignore[arg-type]
    assert isinstance(d, Telnyx) and d.rate == 16000 and list(d.frames) == ["inbound"]
    assert d.handshake(KEY).headers == {"x-telnyx-streaming-auth-token": "t"}
    start = json.loads(d.opening(KEY)[1])
    assert start["start"]["media_format"] == {"encoding": "L16", "sample_rate": 16000, "channels": 1}
    assert start["start"]["custom_parameters"] == {"a": "b"}
    assert d.n_ticks == 400  # the 8 s bundled clip


def test_telnyx_token_from_env_and_pcmu_is_8k(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELNYX_STREAMING_AUTH_TOKEN", "from-env")
    d = build("telnyx", parse("telnyx", "--url", "ws://h/t", "--rate", "16000"))  # type: ignore[arg-type]
    assert isinstance(d, Telnyx) and d.rate == 8000 and d.auth_token == "from-env"


@pytest.mark.parametrize(("argv", "kind", "check"), [
    (["plivo", "--url", "u", "--codec", "l16", "--rate", "16000"], Plivo, lambda d: d.rate == 16000),
    (["exotel", "--url", "u", "--rate", "24000"], Exotel, lambda d: d.rate == 24000 and d.tick_s == 0.1),
    (["vonage", "--url", "u"], Vonage, lambda d: d.rate == 16000),
    (["freeswitch", "--url", "u", "--late-metadata", "--fast"], FreeSwitch,
     lambda d: d.mix_type == "stereo" and d.late_metadata == 5),
    (["freeswitch", "--url", "u", "--mix", "mono", "--late-metadata", "9"], FreeSwitch, lambda d: d.late_metadata == 9),
    (["jambonz", "--url", "u", "--mix", "mixed", "--subprotocol", "audio.drachtio.org"], Jambonz,
     lambda d: d.handshake(KEY).subprotocols == ("audio.drachtio.org",) and d.mix_type == "mixed"),
    (["asterisk", "--url", "u", "--format", "slin16", "--control", "plain", "--late-media-start"], AsteriskWs,
     lambda d: d.rate == 16000 and d.late_media_start == 5 and d.control == "plain"),
    (["audiosocket", "--port", "9", "--rate", "16000"], AudioSocket, lambda d: d.frames[0][0] == 0x12),
])
def test_dialect_options(argv: list[str], kind: type, check: object) -> None:
    d = build(argv[0], parse(*argv))  # type: ignore[arg-type]
    assert isinstance(d, kind) and check(d)  # type: ignore[operator]


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPOOFWATCH_AUDIOHOOK_API_KEY", raising=False)
    assert main(["loadgen", "audiohook", "--url", "ws://127.0.0.1:9/audiohook"]) == 2
    assert "--api-key" in capsys.readouterr().err
    assert main(["loadgen", "audiohook", "--url", "ws://127.0.0.1:9/a", "--api-key", "k",
                 "--client-secret", "not base64!"]) == 2
    assert main(["loadgen", "jambonz", "--url", "ws://127.0.0.1:9/j", "--calls", "0"]) == 2
