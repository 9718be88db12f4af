"""The generic half of the config loader: documented fields with limits, TOML values → frozen
dataclasses (unknown keys refused), secrets from the environment or systemd credentials.

`daemon.config` holds the schema itself; this module knows nothing of spoofwatch's sections.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config file (or value) that cannot be used; the message is meant for the operator."""


def _meta(
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: Sequence[str] | None = None,
) -> dict[str, Any]:
    return {"help": help, "min": min, "max": max, "choices": tuple(choices) if choices else None}


def opt(default: Any, help: str, **limits: Any) -> Any:
    """A config field with its documentation and limits."""
    if isinstance(default, list | dict):
        template = default

        def factory() -> Any:
            return type(template)(template)

        return field(default_factory=factory, metadata=_meta(help, **limits))
    return field(default=default, metadata=_meta(help, **limits))


def parse_hostport(value: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """'HOST:PORT' or '[v6]:PORT' → (host, port). Raises ValueError with a readable reason."""
    host, sep, port_s = value.rpartition(":")
    if not sep or not host or not port_s.isdigit():
        raise ValueError(f"{value!r} is not HOST:PORT")
    port = int(port_s)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ValueError(f"port {port} out of range")
    return host.strip("[]"), port


def _type_name(tp: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: must be a table")
        return _build(tp, value, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: must be an array")
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        # e.g. `int | str` for `workers = 4` or `workers = "auto"`: the first member the value fits
        members = typing.get_args(tp)
        for member in members:
            if isinstance(value, member) and not (member is int and isinstance(value, bool)):
                return value
        raise ConfigError(f"{where}: must be {' or '.join(_type_name(m) for m in members)}, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: must be {_type_name(tp)}, got {value!r}")
    if not isinstance(value, tp):
        raise ConfigError(f"{where}: must be {_type_name(tp)}, got {value!r}")
    return value


def _check_limits(value: Any, meta: Mapping[str, Any], where: str) -> None:
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if choices is not None and isinstance(value, str) and value not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(map(repr, choices))}, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{where}: must be between {lo} and {hi}, got {value!r}")


def _build(cls: type[Any], table: Mapping[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(table) - set(fields))
    moved: Mapping[str, str] = getattr(cls, "MOVED_KEYS", {})  # keys a release moved: say where they went
    for name in unknown:
        if name in moved:
            raise ConfigError(f"{section}.{name}: {moved[name]}")
    if unknown:
        allowed = ", ".join(sorted(fields))
        raise ConfigError(f"{section}: unknown key {unknown[0]!r} (allowed: {allowed})")
    kwargs: dict[str, Any] = {}
    for name, value in table.items():
        where = f"{section}.{name}" if section else name
        try:
            converted = _convert(value, hints[name], where)
        except ConfigError as exc:
            choices = fields[name].metadata.get("choices")
            if choices is None:
                raise
            raise ConfigError(f"{exc} (allowed: {', '.join(map(repr, choices))})") from None
        _check_limits(converted, fields[name].metadata, where)
        kwargs[name] = converted
    return cls(**kwargs)


def read_secret(env_name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A secret from the environment, or from a systemd credential of the same name
    ($CREDENTIALS_DIRECTORY/<env_name>, LoadCredential=)."""
    env = os.environ if environ is None else environ
    value = env.get(env_name)
    if value:
        return value.strip()
    cred_dir = env.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        try:
            return (Path(cred_dir) / env_name).read_text().strip() or None
        except OSError:
            return None
    return None


def iter_documented_keys(cls: type[Any], prefix: str = "") -> typing.Iterator[tuple[str, str]]:
    """(dotted key, help) for every key: used to check config.toml documents them all."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            yield from iter_documented_keys(typing.get_args(tp)[0], f"{name}.")
        elif dataclasses.is_dataclass(tp):
            yield from iter_documented_keys(tp, f"{name}.")  # type: ignore[arg-type]
        else:
            yield name, f.metadata.get("help", "")
