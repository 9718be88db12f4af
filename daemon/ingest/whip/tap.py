"""Encoded audio frames out of aiortc's receiver, decoded on the event loop: no decoder thread.

aiortc 1.16's `RTCRtpReceiver` hands each jitter-buffered encoded frame to a per-receiver *thread*
(`decoder_worker`) through a `queue.Queue`, and the thread hands every decoded frame back with
`asyncio.run_coroutine_threadsafe`: two thread handoffs and GIL switches per 20 ms frame, which cost
5–6× the Opus decode itself. aiortc has no public API for encoded frames (1.16), so this is a narrow
hook, checked against the aiortc version at ingest start (`check_aiortc`):

- Before the receiver starts (it starts once ICE and DTLS are up), `FrameTap.install` puts a tap in place of
  the receiver's decoder queue (`RTCRtpReceiver._RTCRtpReceiver__decoder_queue`).
- aiortc then calls `tap.put((codec, frame))` on the event loop for each encoded frame, and `tap.put(None)`
  when the receiver stops or its transport goes away (the track's end).
- aiortc still starts its decoder thread in `receive()`, with the tap as its input queue. The tap's
  `get()` answers None at once, so the thread ends before any frame arrives. It only posts the end of the
  (unread) remote track.

The frames a tap gets in one loop iteration are decoded together on the next one, with one decoder per
track (daemon/ingest/whip/decode.py), and go to the session's callback in one call.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
from collections.abc import Callable
from typing import Any

from daemon.clock import Clock
from daemon.ingest.whip.decode import TrackDecoder
from daemon.ingest.whip.media import Batch, Pcm, group_by_rate

log = logging.getLogger("spoofwatch.ingest.whip")

#: aiortc versions whose `RTCRtpReceiver` (decoder queue, `decoder_worker`) the hook was read against
SUPPORTED_AIORTC = ((1, 16),)
_QUEUE_ATTR = "_RTCRtpReceiver__decoder_queue"


def check_aiortc() -> None:
    """Raise a clear error unless the installed aiortc is one the hook was checked against."""
    try:
        version = importlib.metadata.version("aiortc")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("[ingest.whip] needs aiortc, which is not installed") from None
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    if parts not in SUPPORTED_AIORTC:
        raise RuntimeError(
            f"[ingest.whip] takes encoded audio from aiortc's RTCRtpReceiver internals, checked against aiortc "
            f"{', '.join('.'.join(map(str, v)) for v in SUPPORTED_AIORTC)}; aiortc {version} is installed. "
            "Install a checked version, or check daemon/ingest/whip/tap.py against this one and add it.")


class FrameTap:
    """One received audio track: encoded frames in (on the loop), decoded mono batches out.

    `on_batches(batches, frames)` gets, once per loop iteration with frames, the track's audio grouped by
    rate and the number of encoded frames; `on_end()` once, when aiortc ends the track; `on_drop(reason)`
    for each frame it cannot decode ("decode_error") and each iteration whose handling failed ("reader_error")."""

    def __init__(self, *, clock: Clock, on_batches: Callable[[list[Batch], int], None],
                 on_end: Callable[[], None], on_drop: Callable[[str], None]) -> None:
        self.clock = clock
        self.ended = False
        self._on_batches = on_batches
        self._on_end = on_end
        self._on_drop = on_drop
        #: (codec, JitterFrame, arrival): at most one loop iteration's frames, drained by the next one
        self._pending: list[tuple[Any, Any, float]] = []
        self._scheduled: asyncio.Handle | None = None
        self._decoder = TrackDecoder()

    def install(self, receiver: Any) -> None:
        """Take `receiver`'s encoded frames; call before aiortc starts it (i.e. before the answer is sent)."""
        if not hasattr(receiver, _QUEUE_ATTR) or getattr(receiver, "_RTCRtpReceiver__started", True):
            raise RuntimeError("aiortc's RTCRtpReceiver has no decoder queue to tap, or has started already: "
                               "see daemon/ingest/whip/tap.py")
        setattr(receiver, _QUEUE_ATTR, self)

    # aiortc's side -----------------------------------------------------------------------------
    def put(self, item: tuple[Any, Any] | None) -> None:
        """aiortc, on the event loop: an encoded frame, or None at the track's end."""
        if self.ended:
            return
        if item is None:
            self.drain()
            self.ended = True
            self._decoder.close()
            self._on_end()
            return
        self._pending.append((item[0], item[1], self.clock.monotonic()))
        if self._scheduled is None:
            self._scheduled = asyncio.get_running_loop().call_soon(self.drain)

    def get(self, *args: Any, **kwargs: Any) -> None:
        """aiortc's decoder thread asks for its first frame: None ends it at once."""
        return None

    # ours --------------------------------------------------------------------------------------
    def drain(self) -> None:
        """Decode what arrived and hand it on (the next loop iteration, or now at the end)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            parts: list[tuple[Pcm, int, float]] = []
            for codec, frame, arrived in pending:
                parts += [(samples, rate, arrived) for samples, rate in self._decode(codec, frame)]
            self._on_batches(group_by_rate(parts), len(pending))
        except Exception:  # one track's bad iteration must not stop its later frames or other calls
            log.exception("whip track: %d frames could not be handled", len(pending))
            self._on_drop("reader_error")

    def close(self) -> None:
        """The session ends: frames still pending are dropped, later ones ignored."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._pending = []
        self.ended = True
        self._decoder.close()

    def _decode(self, codec: Any, frame: Any) -> list[tuple[Pcm, int]]:
        import av

        try:
            return self._decoder.decode(codec, frame)
        except (av.FFmpegError, ValueError):
            # the decoder keeps its state, as aiortc's own worker does
            log.debug("undecodable %s frame dropped", codec.name)
            self._on_drop("decode_error")
            return []
