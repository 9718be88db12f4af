"""One WHIP session: its RTCPeerConnection, one reader task per received audio track, its call.

The session owns everything it starts: the peer connection (closed in `close()`), the reader tasks
(cancelled and awaited) and its close task. aiortc puts decoded frames on an *unbounded* asyncio
queue per track, so each reader drains `track.recv()` at once and does only a channel pick and a
batch append per frame; the leg's decode-free path (`push_pcm`) runs every 100 ms.

A session ends once, with the first of: DELETE, the peer connection failing or closing (ICE/DTLS),
every track ending, no frame for the inactivity timeout (checked by the ingest), shutdown. Its call
ends with that reason and its summary goes out as for any call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.calls.api import CallHandle, LegSink
from daemon.clock import Clock
from daemon.ingest.whip.media import Batch, FrameBatcher, first_channel
from daemon.model import AudioFormat
from daemon.ops.metrics import Metrics

log = logging.getLogger("spoofwatch.ingest.whip")

INGEST = "whip"
#: aiortc's close stops transports and decoder threads; it has never taken long, but a shutdown must
#: not hang on it
PC_CLOSE_TIMEOUT_S = 5.0


@dataclass
class TrackLeg:
    track: Any  # aiortc MediaStreamTrack (kind "audio")
    leg: str
    fmt: AudioFormat


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
        #: the longest aiortc track queue a reader found after a frame (how far it fell behind)
        self.queue_peak = 0
        self.end_reason = ""
        self._readers: set[asyncio.Task[None]] = set()
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
    def reader_count(self) -> int:
        return len(self._readers)

    # running -----------------------------------------------------------------------------------
    def start(self, handle: CallHandle) -> None:
        """The call was admitted: drain every track into its leg."""
        self.handle = handle
        self.call_id = handle.info.call_id
        self.last_activity = self.clock.monotonic()
        loop = asyncio.get_running_loop()
        for tl in self.tracks:
            task = loop.create_task(self._read(tl), name=f"whip:{self.id}:{tl.leg}")
            self._readers.add(task)
            task.add_done_callback(self._reader_done)

    async def _read(self, tl: TrackLeg) -> None:
        from aiortc.mediastreams import MediaStreamError

        assert self.handle is not None
        legs: list[LegSink | None] = []  # opened at the first batch; [None]: could not be opened, audio dropped
        batcher = FrameBatcher()
        queue = getattr(tl.track, "_queue", None)  # aiortc internals, read only to measure backlog

        def deliver(batches: list[Batch]) -> None:
            if not legs:
                legs.append(self._open_leg(tl))
            sink = legs[0]
            if sink is not None:
                for b in batches:
                    sink.push_pcm(b.samples, b.rate, b.received_at)

        try:
            while True:
                try:
                    frame = await tl.track.recv()
                except MediaStreamError:
                    return
                now = self.clock.monotonic()
                self.last_activity = now
                self.frames += 1
                self._frames_in.inc()
                if queue is not None:
                    self.queue_peak = max(self.queue_peak, queue.qsize())
                samples = first_channel(frame.to_ndarray(), len(frame.layout.channels), frame.format.is_planar)
                batches = batcher.push(samples, frame.sample_rate, now)
                if batches:
                    deliver(batches)
        finally:
            # cancelled by close(), or the track ended: what was batched still goes to the leg
            tail = batcher.flush()
            if tail:
                deliver(tail)

    def _open_leg(self, tl: TrackLeg) -> LegSink | None:
        assert self.handle is not None
        try:
            return self.handle.open_leg(tl.leg, tl.fmt)
        except Exception:
            # e.g. the call was ended by a drain while media still flows: this track's audio is dropped
            log.warning("could not open leg %s", tl.leg, exc_info=True, extra={"call_id": self.call_id})
            self.metrics.drops.labels(INGEST, "leg_open_failed").inc()
            return None

    def _reader_done(self, task: asyncio.Task[None]) -> None:
        self._readers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("whip track reader failed", exc_info=task.exception(), extra={"call_id": self.call_id})
            self.metrics.drops.labels(INGEST, "reader_error").inc()
        if not self._readers and not self.closing:
            self.begin_close("tracks_ended")

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
            readers = list(self._readers)
            for task in readers:
                task.cancel()
            for task in readers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task  # each flushes its batch to the leg on the way out
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
