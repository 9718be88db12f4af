"""`[daemon] event_loop` and SPOOFWATCH_EVENT_LOOP choose the loop the daemon runs on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from daemon.app_cli import EVENT_LOOP_ENV, event_loop_factory
from daemon.config import ConfigError


def loop_type(choice: str) -> type:
    factory = event_loop_factory(choice)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_running_loop_type())


async def _running_loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_auto_and_uvloop_run_on_uvloop_asyncio_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert issubclass(loop_type("auto"), uvloop.Loop)
    assert issubclass(loop_type("uvloop"), uvloop.Loop)
    assert not issubclass(loop_type("asyncio"), uvloop.Loop)


def test_the_environment_overrides_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert not issubclass(loop_type("uvloop"), uvloop.Loop)
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")
    assert issubclass(loop_type("asyncio"), uvloop.Loop)
    monkeypatch.setenv(EVENT_LOOP_ENV, "tokio")
    with pytest.raises(ConfigError, match="auto, uvloop or asyncio"):
        event_loop_factory("auto")


def test_uvloop_required_but_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert event_loop_factory("auto") is None  # auto falls back to asyncio's loop
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        event_loop_factory("uvloop")
