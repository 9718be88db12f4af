"""The generic driver from fork parser events (daemon.ingest.forks.events) to the call layer.

One `ForkCall` per connection, whatever the transport (websocket route, AudioSocket TCP):
`CallStart` → `CallAdmission.admit` (metadata gets a first key `legs` naming the legs, and saying so
when a leg is the mixed conversation) → `Audio` opens the leg on first use (`CallHandle.open_leg(name,
fmt)`) and pushes the payload → `Gap` pushes silence → `Dtmf` → `CallHandle.dtmf` → `CallEnd` ends the
call and asks for a normal close → `Reply` is handed back to be sent → `Problem` is counted in
`spoofwatch_drops_total{ingest,reason}`; a fatal one ends the call and asks for a close with its
code. Nothing here does I/O: `apply()` returns what the transport must send and whether to close.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from daemon.calls.api import CallAdmission, CallHandle, CallRefused, LegSink
from daemon.ingest.forks.events import (
    CLOSE_NORMAL,
    Audio,
    CallEnd,
    CallStart,
    Dtmf,
    ForkEvent,
    Gap,
    MetadataUpdate,
    Pause,
    Problem,
    Reply,
    Resume,
)
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.forks")

#: websocket close code for "try again later" (admission refused, shutting down)
CLOSE_TRY_AGAIN_LATER = 1013
MIXED_NOTE = "mixed (both parties in one stream: the platform sends the conversation mixed)"


@dataclass
class Actions:
    """What the transport must do after `apply()`: send `replies` in order, then close if `close`."""

    replies: list[str | bytes] = field(default_factory=list)
    close: tuple[int, str] | None = None


def legs_note(start: CallStart) -> str:
    names = [leg.name for leg in start.legs]
    return ", ".join(MIXED_NOTE if name == "mixed" else name for name in names) or "-"


class ForkCall:
    """One connection's call. `accepting()` is asked before admitting (False while draining)."""

    def __init__(self, ingest: str, admission: CallAdmission, metrics: Metrics,
                 accepting: Callable[[], bool]) -> None:
        self.ingest = ingest
        self.admission = admission
        self.metrics = metrics
        self.accepting = accepting
        self.handle: CallHandle | None = None
        self.call_id = ""
        self.legs: dict[str, LegSink | None] = {}  # None: the leg could not be opened
        self.ended = False
        self.problems = 0
        self._frames_in = metrics.frames_in.labels(ingest)

    def end(self, reason: str) -> None:
        if self.handle is not None and not self.ended:
            self.ended = True
            self.handle.end(reason)

    def apply(self, events: Iterable[ForkEvent], now: float) -> Actions:
        out = Actions()
        for event in events:
            if out.close is not None:
                break  # parsers emit nothing after a fatal problem; belt and braces
            self._apply(event, now, out)
        return out

    def _apply(self, event: ForkEvent, now: float, out: Actions) -> None:
        if isinstance(event, Audio):
            self._frames_in.inc()
            sink = self._leg(event)
            if sink is not None:
                sink.push(event.payload, now)
        elif isinstance(event, Gap):
            gap_sink = self.legs.get(event.leg)
            if gap_sink is not None and event.seconds > 0:
                gap_sink.push_silence(event.seconds, now)
        elif isinstance(event, Reply):
            out.replies.append(event.payload)
        elif isinstance(event, Dtmf):
            if self.handle is not None and not self.ended:
                self.handle.dtmf(event.leg, event.digit)
        elif isinstance(event, CallStart):
            out.close = self._admit(event)
        elif isinstance(event, CallEnd):
            self.end(event.reason)
            out.close = (CLOSE_NORMAL, event.reason)
        elif isinstance(event, Problem):
            self._problem(event, out)
        elif isinstance(event, Pause | Resume):
            log.info("%s stream %s", self.ingest, "paused" if isinstance(event, Pause) else "resumed",
                     extra={"call_id": self.call_id or "-"})
        elif isinstance(event, MetadataUpdate):
            log.info("%s metadata update: %s", self.ingest, sorted(event.metadata)[:16],
                     extra={"call_id": self.call_id or "-"})
        # Mark needs nothing from a listen-only fork.

    def _problem(self, event: Problem, out: Actions) -> None:
        self.metrics.drops.labels(self.ingest, event.reason).inc()
        self.problems += 1
        # the first problem of a connection is worth a line; a peer repeating it must not flood the log
        level = logging.WARNING if event.fatal else logging.INFO if self.problems == 1 else logging.DEBUG
        log.log(level, "%s %s: %s", self.ingest, event.reason, event.detail, extra={"call_id": self.call_id or "-"})
        if event.fatal:
            self.end(f"protocol_error:{event.reason}")
            out.close = (event.close_code, event.reason)

    def _admit(self, start: CallStart) -> tuple[int, str] | None:
        if not self.accepting():
            self.metrics.calls_refused.labels(self.ingest, "shutting_down").inc()
            return CLOSE_TRY_AGAIN_LATER, "shutting_down"
        metadata = {"legs": legs_note(start), **start.metadata}
        try:
            # the admission counts its own refusals (calls_refused)
            self.handle = self.admission.admit(CallStart(start.call_id, metadata, start.legs).info(self.ingest))
        except CallRefused as exc:
            log.info("%s call refused: %s", self.ingest, exc.reason, extra={"call_id": start.call_id})
            return CLOSE_TRY_AGAIN_LATER, exc.reason
        self.call_id = start.call_id
        log.info("%s call started", self.ingest, extra={"call_id": start.call_id,
                                                         "legs": [leg.name for leg in start.legs]})
        return None

    def _leg(self, audio: Audio) -> LegSink | None:
        if audio.leg in self.legs:
            return self.legs[audio.leg]
        sink: LegSink | None = None
        if self.handle is not None and not self.ended:
            try:
                sink = self.handle.open_leg(audio.leg, audio.fmt)
            except Exception:
                # e.g. the call was ended by a drain while media still flows: drop this leg's audio
                log.warning("could not open leg %s", audio.leg, exc_info=True, extra={"call_id": self.call_id})
                self.metrics.drops.labels(self.ingest, "leg_open_failed").inc()
        self.legs[audio.leg] = sink
        return sink


__all__ = ["CLOSE_TRY_AGAIN_LATER", "Actions", "ForkCall", "legs_note"]
