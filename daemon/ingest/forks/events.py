"""The vocabulary every media-fork parser speaks: what a fork says, in the call layer's terms.

A parser (one per connection) turns wire bytes into these events; the thin asyncio layer maps them
onto `daemon.calls.api`: `CallStart` → `CallAdmission.admit(CallInfo)`, `Audio` → the leg's
`LegSink.push` (a leg is opened on its first `Audio`, so a declared but silent leg costs nothing),
`Gap` → `LegSink.push_silence`, `Dtmf` → `CallHandle.dtmf`, `CallEnd` → `CallHandle.end`,
`Reply` → send on the socket (protocols that answer: AudioHook), `Problem` → count
`spoofwatch_drops_total{ingest,reason}`; a fatal one closes the connection with `close_code`
(after sending any `Reply` returned before it) and ends the call if one was started.

Contracts shared by every parser:
- nothing raises to the caller on peer input; every malformed input is a `Problem` with a short
  metric label as `reason`;
- after a fatal `Problem` or a `CallEnd` the parser returns nothing more (further input is ignored);
- `Audio.fmt` is authoritative for its payload; `CallStart.legs` lists the legs the stream can carry
  with their expected formats (hints for the call layer; a leg may stay silent);
- no I/O and no clock reads: time, where a protocol needs it, is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from daemon.model import AudioFormat, CallInfo

#: Websocket close codes (RFC 6455 §7.4.1) a fatal Problem asks the server to close with.
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009


@dataclass(frozen=True, slots=True)
class LegSpec:
    """One analysed leg: `name` is e.g. "inbound", "customer", "caller", "mixed"."""

    name: str
    fmt: AudioFormat


@dataclass(frozen=True, slots=True)
class CallStart:
    call_id: str
    metadata: Mapping[str, str]
    legs: tuple[LegSpec, ...]

    def info(self, ingest: str) -> CallInfo:
        return CallInfo(self.call_id, ingest, dict(self.metadata))


@dataclass(frozen=True, slots=True)
class Audio:
    """Encoded audio of one leg, in `fmt` (μ-law bytes, L16 bytes in `fmt.codec`'s byte order, ...)."""

    leg: str
    payload: bytes
    fmt: AudioFormat


@dataclass(frozen=True, slots=True)
class Gap:
    """The sender lost (or discarded) `seconds` of this leg: insert silence so leg time stays aligned."""

    leg: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Dtmf:
    leg: str
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    name: str


@dataclass(frozen=True, slots=True)
class Pause:
    """The sender paused the stream (e.g. Genesys monitoring off): the call is NOT over."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class Resume:
    pass


@dataclass(frozen=True, slots=True)
class MetadataUpdate:
    """Metadata that arrived after `CallStart` (a late FreeSWITCH metadata frame, an AudioHook update)."""

    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class CallEnd:
    reason: str  # "stop", "hangup", "socket_closed", "end", ...


@dataclass(frozen=True, slots=True)
class Reply:
    """A message the server must send back on the same connection (text frame for str, binary for bytes)."""

    payload: str | bytes


@dataclass(frozen=True, slots=True)
class Problem:
    reason: str  # metric label
    fatal: bool
    detail: str = ""  # for logs only; never contains secrets
    close_code: int = CLOSE_PROTOCOL_ERROR  # meaningful when fatal


ForkEvent = (
    CallStart | Audio | Gap | Dtmf | Mark | Pause | Resume | MetadataUpdate | CallEnd | Reply | Problem
)


@dataclass(slots=True)
class DropCounts:
    """Per-connection tally of problems by reason (tests and logs; the server counts the metric)."""

    by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str) -> None:
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1

    def __getitem__(self, reason: str) -> int:
        return self.by_reason.get(reason, 0)
