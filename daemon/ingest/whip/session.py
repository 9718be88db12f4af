"""One WHIP session: its RTCPeerConnection, one frame tap per received audio track, its call.

The session owns everything it starts: the peer connection (closed in `close()`), the taps (closed
there) and its close task. Each track's encoded frames come out of aiortc on the event loop through a
`FrameTap` (daemon/ingest/whip/tap.py: no decoder thread, no queue): the frames of one loop iteration
are decoded together and go to the leg in one `push_pcm`.

A session ends once, with the first of: DELETE, the peer connection failing or closing (ICE/DTLS),
every track ending, no frame for the inactivity timeout (checked by the ingest), shutdown. Its call
ends with that reason and its summary goes out as for any call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from daemon.calls.api import CallHandle, LegSink
from daemon.clock import Clock
from daemon.ingest.whip.media import Batch
from daemon.ingest.whip.tap import FrameTap
from daemon.model import AudioFormat
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.whip")

INGEST = "whip"
#: aiortc's close stops transports; it has never taken long, but a shutdown must not hang on it
PC_CLOSE_TIMEOUT_S = 5.0


@dataclass
class TrackLeg:
    leg: str
    fmt: AudioFormat
    tap: FrameTap
    #: the leg, opened at the first audio; None after a failed open (the track's audio is dropped)
    sink: LegSink | None = None
    opened: bool = field(default=False)


class WhipSession:
    def __init__(self, session_id: str, pc: Any, *, clock: Clock, metrics: Metrics,
                 on_closed: Callable[[WhipSession], None]) -> None:
        self.id = session_id
        self.pc = pc
        self.clock = clock
        self.metrics = metrics
        self.call_id = ""
        self.handle: CallHandle | None = None
        self.tracks: list[TrackLeg] = []
        self.created_at = clock.monotonic()
        #: last frame on any track (session creation until the first): the inactivity clock
        self.last_activity = self.created_at
        self.frames = 0
        #: the most frames one track got in one loop iteration (how far the loop fell behind)
        self.queue_peak = 0
        self.end_reason = ""
        self._close_task: asyncio.Task[None] | None = None
        self._on_closed = on_closed
        self._frames_in = metrics.frames_in.labels(INGEST)

    @property
    def closing(self) -> bool:
        return self._close_task is not None

    @property
    def started(self) -> bool:
        return self.handle is not None

    @property
    def live_tracks(self) -> int:
        """Tracks still taking frames."""
        return sum(1 for t in self.tracks if not t.tap.ended)

    # setting up --------------------------------------------------------------------------------
    def add_track(self, receiver: Any, leg: str, fmt: AudioFormat) -> TrackLeg:
        """Tap `receiver` (aiortc RTCRtpReceiver, not started yet) as the leg `leg`."""
        box: list[TrackLeg] = []
        tap = FrameTap(clock=self.clock, on_batches=lambda b, n: self._on_audio(box[0], b, n),
                       on_end=self._track_ended, on_drop=self._drop)
        tap.install(receiver)
        tl = TrackLeg(leg, fmt, tap)
        box.append(tl)
        self.tracks.append(tl)
        return tl

    # running -----------------------------------------------------------------------------------
    def start(self, handle: CallHandle) -> None:
        """The call was admitted: every track's audio now goes to its leg."""
        self.handle = handle
        self.call_id = handle.info.call_id
        self.last_activity = self.clock.monotonic()

    def _on_audio(self, tl: TrackLeg, batches: list[Batch], frames: int) -> None:
        self.last_activity = self.clock.monotonic()
        self.frames += frames
        self._frames_in.inc(frames)
        self.queue_peak = max(self.queue_peak, frames)
        if self.handle is None:
            self.metrics.drops.labels(INGEST, "before_start").inc(frames)
            return
        if not tl.opened:
            tl.opened = True
            tl.sink = self._open_leg(tl)
        if tl.sink is not None:
            for b in batches:
                tl.sink.push_pcm(b.samples, b.rate, b.received_at)

    def _drop(self, reason: str) -> None:
        self.metrics.drops.labels(INGEST, reason).inc()

    def _track_ended(self) -> None:
        if self.live_tracks == 0 and not self.closing:
            self.begin_close("tracks_ended")

    def _open_leg(self, tl: TrackLeg) -> LegSink | None:
        assert self.handle is not None
        try:
            return self.handle.open_leg(tl.leg, tl.fmt)
        except Exception:
            # e.g. the call was ended by a drain while media still flows: this track's audio is dropped
            log.warning("could not open leg %s", tl.leg, exc_info=True, extra={"call_id": self.call_id})
            self.metrics.drops.labels(INGEST, "leg_open_failed").inc()
            return None

    def on_connection_state(self) -> None:
        state = self.pc.connectionState
        if state in ("failed", "closed") and not self.closing:
            self.begin_close("ice_failed" if state == "failed" else "pc_closed")

    def idle_for(self, now: float) -> float:
        return now - self.last_activity

    # ending ------------------------------------------------------------------------------------
    def begin_close(self, reason: str) -> asyncio.Task[None]:
        """Start ending the session (idempotent: the first reason wins); returns the close task,
        which the session owns."""
        if self._close_task is None:
            self.end_reason = reason
            self._close_task = asyncio.get_running_loop().create_task(self._close(), name=f"whip-close:{self.id}")
        return self._close_task

    async def close(self, reason: str) -> None:
        await asyncio.shield(self.begin_close(reason))

    async def _close(self) -> None:
        try:
            for tl in self.tracks:
                tl.tap.drain()  # what arrived still goes to the leg
                tl.tap.close()
            if self.handle is not None:
                self.handle.end(self.end_reason)
            try:
                async with asyncio.timeout(PC_CLOSE_TIMEOUT_S):
                    await self.pc.close()
            except Exception:
                log.warning("peer connection did not close cleanly", exc_info=True,
                            extra={"call_id": self.call_id or "-"})
        finally:
            if self.handle is not None:
                log.info("whip session ended", extra={
                    "call_id": self.call_id, "whip_session": self.id, "reason": self.end_reason,
                    "frames": self.frames, "track_queue_peak": self.queue_peak,
                    "duration_s": round(self.clock.monotonic() - self.created_at, 3)})
            self._on_closed(self)
