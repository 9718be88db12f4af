"""Twilio stream events → the call layer: admit the call at `start`, open each track as its own leg at
its first media, push audio and gap fill, count problems, say when the socket must close.

`TwilioCallActions` is the part of `TwilioIngest` (server.py) that acts on what the sans-I/O parser
(protocol.py) returns for one websocket (`TwilioStream`); it runs inside the connection's
`data_received`, once per message, so it never awaits.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from prometheus_client import Counter
from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode

from daemon.calls.api import CallAdmission, CallHandle, CallRefused, LegSink
from daemon.ingest.twilio.protocol import (
    Dtmf,
    Gap,
    Lag,
    Media,
    Problem,
    Started,
    Stopped,
    TwilioEvent,
    TwilioStreamParser,
)
from daemon.model import PCMU_8K, CallInfo
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.twilio")

INGEST = "twilio"
#: media messages per stream added to frames_received_total at once (one second's worth; the rest at
#: the stream's end): a locked counter increment per message was a visible share of the hot path
FRAMES_COUNT_BATCH = 50

_FATAL_CLOSE_CODES = {
    "unsupported_media_format": CloseCode.UNSUPPORTED_DATA,
    "oversize": CloseCode.MESSAGE_TOO_BIG,
}


@dataclass(eq=False)  # identity semantics: streams live in a set
class TwilioStream:
    """One websocket's state; lives only as long as its handler."""

    ws: ServerConnection
    parser: TwilioStreamParser
    call_sid: str = ""
    call_id: str = ""
    handle: CallHandle | None = None
    legs: dict[str, LegSink | None] = field(default_factory=dict)  # None: the leg could not be opened
    ended: bool = False
    problems: int = 0
    frames_uncounted: int = 0  # media messages not yet added to frames_in (in batches, and at the end)
    #: settled (close code, close reason, call end reason) when a message means the socket must close
    outcome: asyncio.Future[tuple[int, str, str]] | None = None

    def end(self, reason: str) -> None:
        if self.handle is not None and not self.ended:
            self.ended = True
            self.handle.end(reason)


class TwilioCallActions:
    """Acting on one stream's events (mixed into `TwilioIngest`, which sets these attributes)."""

    admission: CallAdmission
    metrics: Metrics
    _accepting: bool
    _by_call_sid: dict[str, int]
    _frames_in: Counter  # metrics.frames_in.labels("twilio")

    def _apply(self, stream: TwilioStream, event: TwilioEvent, now: float) -> tuple[int, str] | None:
        """Act on one event; returns (close code, reason) when the socket must close."""
        if isinstance(event, Media):
            stream.frames_uncounted += 1
            if stream.frames_uncounted >= FRAMES_COUNT_BATCH:
                self._frames_in.inc(stream.frames_uncounted)
                stream.frames_uncounted = 0
            sink = self._leg(stream, event.track)
            if sink is not None:
                sink.push(event.payload, now)
        elif isinstance(event, Gap):
            sink = self._leg(stream, event.track)
            if sink is not None and event.fill_seconds > 0:
                sink.push_silence(event.fill_seconds, now)  # the sink counts gap_fill_seconds
            if event.unfilled_reason:
                self.metrics.drops.labels(INGEST, event.unfilled_reason).inc()
            log.debug("twilio lost %.3f s on %s, %.3f s filled", event.seconds, event.track, event.fill_seconds,
                      extra={"call_id": stream.call_id})
        elif isinstance(event, Lag):
            self.metrics.ingest_lag_seconds.labels(INGEST).inc(event.seconds)
        elif isinstance(event, Dtmf):
            if stream.handle is not None:
                stream.handle.dtmf(event.track, event.digit)
        elif isinstance(event, Started):
            return self._admit(stream, event)
        elif isinstance(event, Stopped):
            stream.end("stop")
            return CloseCode.NORMAL_CLOSURE, "stop"
        elif isinstance(event, Problem):
            self.metrics.drops.labels(INGEST, event.reason).inc()
            stream.problems += 1
            # the first problem of a stream is worth a line; a peer repeating it must not flood the log
            level = logging.WARNING if event.fatal else logging.INFO if stream.problems == 1 else logging.DEBUG
            log.log(level, "twilio %s: %s", event.reason, event.detail, extra={"call_id": stream.call_id or "-"})
            if event.fatal:
                stream.end(f"protocol_error:{event.reason}")
                return _FATAL_CLOSE_CODES.get(event.reason, CloseCode.POLICY_VIOLATION), event.reason
        # Connected and Mark need nothing from a listen-only fork.
        return None

    def _admit(self, stream: TwilioStream, started: Started) -> tuple[int, str] | None:
        call_sid = started.call_sid
        # Stacked <Start><Stream> forks of one call: each needs its own call id.
        call_id = call_sid if call_sid not in self._by_call_sid else f"{call_sid}:{started.stream_sid}"
        metadata = {
            **started.custom_parameters,
            "call_sid": call_sid,
            "stream_sid": started.stream_sid,
            "account_sid": started.account_sid,
        }
        if not self._accepting:
            self.metrics.calls_refused.labels(INGEST, "shutting_down").inc()
            return CloseCode.TRY_AGAIN_LATER, "shutting_down"
        try:
            # The admission counts its own refusals (calls_refused), so they are not counted here.
            try:
                stream.handle = self.admission.admit(CallInfo(call_id=call_id, ingest=INGEST, metadata=metadata))
            except CallRefused as exc:
                if exc.reason != "duplicate_call_id" or call_id != call_sid:
                    raise
                # A restarted fork of a call whose earlier stream is still finishing (final results).
                call_id = f"{call_sid}:{started.stream_sid}"
                stream.handle = self.admission.admit(CallInfo(call_id=call_id, ingest=INGEST, metadata=metadata))
        except CallRefused as exc:
            log.info("twilio stream refused: %s", exc.reason, extra={"call_id": call_id})
            return CloseCode.TRY_AGAIN_LATER, exc.reason
        stream.call_sid = call_sid
        stream.call_id = call_id
        self._by_call_sid[call_sid] = self._by_call_sid.get(call_sid, 0) + 1
        log.info("twilio stream started", extra={"call_id": call_id, "stream_sid": started.stream_sid,
                                                 "tracks": list(started.tracks)})
        return None

    def _leg(self, stream: TwilioStream, track: str) -> LegSink | None:
        if track in stream.legs:
            return stream.legs[track]
        sink: LegSink | None = None
        if stream.handle is not None and not stream.ended:
            try:
                sink = stream.handle.open_leg(track, PCMU_8K)
            except Exception:
                # e.g. the call was ended by a drain while media still flows: drop this track's audio
                log.warning("could not open leg %s", track, exc_info=True, extra={"call_id": stream.call_id})
                self.metrics.drops.labels(INGEST, "leg_open_failed").inc()
        stream.legs[track] = sink
        return sink



__all__ = ["FRAMES_COUNT_BATCH", "INGEST", "TwilioCallActions", "TwilioStream"]
