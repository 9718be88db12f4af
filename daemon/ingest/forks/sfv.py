"""A small RFC 8941 (Structured Field Values) Dictionary parser and Inner List serializer: just
what RFC 9421 signature headers need. Integers, decimals (kept as float), strings, tokens, byte
sequences and booleans; parameters; inner lists. Malformed input raises `SfvError`."""

from __future__ import annotations

import base64
import binascii
import string
from dataclasses import dataclass, field

BareItem = int | float | str | bytes | bool
_KEY_FIRST = set(string.ascii_lowercase + "*")
_KEY_CHARS = set(string.ascii_lowercase + string.digits + "_-.*")
_TOKEN_FIRST = set(string.ascii_letters + "*")
_TOKEN_CHARS = set(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~:/")
_B64_CHARS = set(string.ascii_letters + string.digits + "+/=")


class SfvError(ValueError):
    pass


class Token(str):
    """An sf-token (serialized without quotes)."""


@dataclass(frozen=True, slots=True)
class Item:
    value: BareItem
    params: tuple[tuple[str, BareItem], ...] = ()


@dataclass(frozen=True, slots=True)
class InnerList:
    items: tuple[Item, ...]
    params: tuple[tuple[str, BareItem], ...] = field(default=())


class _Reader:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self) -> str:
        ch = self.peek()
        self.i += 1
        return ch

    def skip(self, chars: str) -> None:
        while self.peek() and self.peek() in chars:
            self.i += 1


def parse_dictionary(text: str) -> dict[str, BareItem | InnerList]:
    """A Dictionary field; members whose value is an Item are returned as its bare value (params
    dropped: signature headers do not use them), inner lists as InnerList."""
    r = _Reader(text)
    r.skip(" ")
    out: dict[str, BareItem | InnerList] = {}
    while r.peek():
        key = _key(r)
        if r.peek() == "=":
            r.take()
            if r.peek() == "(":
                out[key] = _inner_list(r)
            else:
                out[key] = _bare(r)
                _params(r)
        else:
            _params(r)
            out[key] = True
        r.skip(" \t")
        if not r.peek():
            break
        if r.take() != ",":
            raise SfvError(f"expected ',' at {r.i - 1}")
        r.skip(" \t")
        if not r.peek():
            raise SfvError("trailing comma")
    return out


def _key(r: _Reader) -> str:
    if r.peek() not in _KEY_FIRST or not r.peek():
        raise SfvError(f"bad key start at {r.i}")
    start = r.i
    while r.peek() and r.peek() in _KEY_CHARS:
        r.i += 1
    return r.s[start:r.i]


def _params(r: _Reader) -> tuple[tuple[str, BareItem], ...]:
    params: list[tuple[str, BareItem]] = []
    while r.peek() == ";":
        r.take()
        r.skip(" ")
        key = _key(r)
        value: BareItem = True
        if r.peek() == "=":
            r.take()
            value = _bare(r)
        params = [p for p in params if p[0] != key] + [(key, value)]
    return tuple(params)


def _inner_list(r: _Reader) -> InnerList:
    r.take()  # "("
    items: list[Item] = []
    while True:
        r.skip(" ")
        if r.peek() == ")":
            r.take()
            return InnerList(tuple(items), _params(r))
        if not r.peek():
            raise SfvError("unterminated inner list")
        value = _bare(r)
        items.append(Item(value, _params(r)))
        if r.peek() not in (" ", ")"):
            raise SfvError(f"bad inner list at {r.i}")


def _bare(r: _Reader) -> BareItem:
    ch = r.peek()
    if ch == '"':
        return _string(r)
    if ch == ":":
        return _bytes(r)
    if ch == "?":
        r.take()
        flag = r.take()
        if flag not in ("0", "1"):
            raise SfvError("bad boolean")
        return flag == "1"
    if ch == "-" or ch.isdigit():
        return _number(r)
    if ch and ch in _TOKEN_FIRST:
        start = r.i
        while r.peek() and r.peek() in _TOKEN_CHARS:
            r.i += 1
        return Token(r.s[start:r.i])
    raise SfvError(f"bad item at {r.i}")


def _string(r: _Reader) -> str:
    r.take()
    out: list[str] = []
    while True:
        ch = r.take()
        if ch == "":
            raise SfvError("unterminated string")
        if ch == "\\":
            nxt = r.take()
            if nxt not in ('"', "\\"):
                raise SfvError("bad escape")
            out.append(nxt)
        elif ch == '"':
            return "".join(out)
        elif not (" " <= ch <= "~"):
            raise SfvError("non-printable in string")
        else:
            out.append(ch)


def _bytes(r: _Reader) -> bytes:
    r.take()
    start = r.i
    while r.peek() and r.peek() != ":":
        if r.peek() not in _B64_CHARS:
            raise SfvError("bad byte sequence")
        r.i += 1
    if r.take() != ":":
        raise SfvError("unterminated byte sequence")
    try:
        return base64.b64decode(r.s[start:r.i - 1], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SfvError(f"bad base64: {exc}") from None


def _number(r: _Reader) -> int | float:
    start = r.i
    if r.peek() == "-":
        r.i += 1
    while r.peek() and (r.peek().isdigit() or r.peek() == "."):
        r.i += 1
    text = r.s[start:r.i]
    digits = text.lstrip("-")
    if not digits or not digits.replace(".", "").isascii() or not digits.replace(".", "").isdigit():
        raise SfvError("bad number")
    if "." in text:
        if text.count(".") > 1 or len(digits.split(".")[0]) > 12 or len(digits.split(".")[1]) > 3:
            raise SfvError("bad decimal")
        return float(text)
    if len(digits) > 15:
        raise SfvError("integer too long")
    return int(text)


def serialize_bare(value: BareItem) -> str:
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value)}.0"
    if isinstance(value, bytes):
        return ":" + base64.b64encode(value).decode() + ":"
    if isinstance(value, Token):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def serialize_params(params: tuple[tuple[str, BareItem], ...]) -> str:
    return "".join(f";{k}" if v is True else f";{k}={serialize_bare(v)}" for k, v in params)


def serialize_inner_list(value: InnerList) -> str:
    items = " ".join(serialize_bare(i.value) + serialize_params(i.params) for i in value.items)
    return f"({items})" + serialize_params(value.params)
