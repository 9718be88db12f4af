"""One DeepfakeDetection call of a leg: a writer task and a reader task, and why the call ended.

The writer sends the config message, then the leg's queued chunks (cid + token on every message)
and half-closes at leg end. The reader maps results and watches for a stall: a result owed (see
stall.py) and none read for stall_timeout_s. `StreamAttempt.run()` returns when the call ended
cleanly at leg end and raises otherwise: `StreamRefused` (do not retry: credentials, request or TLS
trust refused), `StreamStalled`, or the call's `grpc.aio.AioRpcError` (retry with replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import grpc

from daemon.upstream.chunks import DATA
from daemon.upstream.results import audio_message, config_message

if TYPE_CHECKING:
    from daemon.upstream.stream import LegStream

log = logging.getLogger("spoofwatch.upstream")

FATAL_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
               grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED}
#: How gRPC core words a TLS handshake the client refused (untrusted certificate, name mismatch) or a
#: TLS client talking to a plaintext server. Retrying does not help: the configuration must change.
TLS_FAILURE_MARKERS = ("CERTIFICATE_VERIFY_FAILED", "Hostname Verification Check failed", "Tls handshake failed",
                       "WRONG_VERSION_NUMBER")
SIMULATED_KEY = "x-spoofwatch-simulated"
#: A stream counts as served (state "streaming") at its first result, or once it stayed open this long
#: (capped by stall_timeout_s). Initial metadata proves nothing: a refusing server may send it just before
#: its error status (the simulator does), and a trailers-only refusal yields empty metadata.
SERVED_AFTER_S = 1.0


class StreamStalled(Exception):
    pass


class StreamRefused(Exception):
    """The upstream refused this leg for a reason a retry does not cure."""

    def __init__(self, code: grpc.StatusCode, detail: str, *, tls: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.tls = tls

    @property
    def label(self) -> str:
        """The `code` label of spoofwatch_upstream_errors_total."""
        return "TLS_HANDSHAKE" if self.tls else self.code.name


def classify(exc: BaseException | None) -> BaseException:
    if isinstance(exc, grpc.aio.AioRpcError):
        details = exc.details() or ""
        if exc.code() in FATAL_CODES:
            return StreamRefused(exc.code(), details)
        if exc.code() is grpc.StatusCode.UNAVAILABLE and any(m in details for m in TLS_FAILURE_MARKERS):
            return StreamRefused(exc.code(), details, tls=True)
    return exc if exc is not None else RuntimeError("unknown upstream failure")


class StreamAttempt:
    def __init__(self, leg: LegStream, call: Any, offset: float) -> None:
        self.leg = leg
        self.call = call
        self.offset = offset  # call time of this stream's time 0

    async def run(self) -> None:
        leg = self.leg
        leg.stall.reset()
        writer = asyncio.create_task(self._write(), name=f"upstream-writer:{leg.leg}")
        reader = asyncio.create_task(self._read(), name=f"upstream-reader:{leg.leg}")
        try:
            done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done and reader.exception() is not None:
                raise await self._final_status(reader.exception())
            if reader in done and not writer.done():
                raise StreamStalled("the stream ended before the leg did")
            try:
                await reader  # the writer half-closed (or stopped on a failed write): the reader has the status
            except Exception as exc:
                raise await self._final_status(exc) from None
            if not leg.closing or leg.chunks.queue:
                raise StreamStalled("the stream ended before the leg did")
        finally:
            for t in (writer, reader):
                if not t.done():
                    t.cancel()
            for t in (writer, reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            self.call.cancel()  # no-op when finished; otherwise the old call would leak

    async def _final_status(self, exc: BaseException | None) -> BaseException:
        """Writing to (or half-closing) a call the server already ended fails with a generic INTERNAL
        error, sometimes before the call itself reports its end: wait briefly for the call's own final
        status and prefer it (e.g. UNAUTHENTICATED, which must not be retried)."""
        first = classify(exc)
        if isinstance(first, StreamRefused):
            return first
        try:
            async with asyncio.timeout(1.0):
                code = await self.call.code()
                details = await self.call.details()
        except (TimeoutError, Exception):
            code = None
        if code is not None and code in FATAL_CODES:
            return StreamRefused(code, details or "")
        return first

    async def _write(self) -> None:
        """A failed write ends the writer quietly: the server's own status (why the call ended: e.g.
        UNAUTHENTICATED) reaches the reader, which decides whether to retry."""
        try:
            await self._write_all()
        except grpc.aio.AioRpcError as exc:
            log.debug("write failed (%s); the reader reports the call's status", exc.code().name)
        except (grpc.aio.UsageError, asyncio.InvalidStateError):
            pass

    async def _write_all(self) -> None:
        leg, call = self.leg, self.call
        queue = leg.chunks.queue
        loop = asyncio.get_running_loop()
        await call.write(config_message(leg.creds, leg.cfg.result_level))
        while True:
            while queue:
                item = queue.popleft()
                try:
                    await call.write(audio_message(leg.creds, item[DATA]))
                except BaseException:
                    # not (surely) on this stream: it goes to the next one, in order (it follows every
                    # replayed chunk, all written before it); dropping it would leave a hole in the leg
                    queue.appendleft(item)
                    raise
                leg.chunk_written(item, leg.stall.written(item[DATA], loop.time()))
            if leg.closing:
                await call.done_writing()
                return
            leg.wake.clear()
            await leg.wake.wait()

    async def _read(self) -> None:
        leg, call = self.leg, self.call
        # initial_metadata() answers empty metadata on a dead connection; wait_for_connection() raises
        await call.wait_for_connection()
        metadata = await call.initial_metadata()
        if metadata is not None and any(key == SIMULATED_KEY for key, _ in metadata):
            leg.mark_simulated()
        loop = asyncio.get_running_loop()
        stall = leg.stall
        served_at = loop.time() + min(SERVED_AFTER_S, stall.stall_s)
        served = False
        # One read stays pending across the stall checks: grpc.aio cancels the whole call when a read
        # is cancelled, so a read must never be given up (e.g. by a timeout) while the call should live.
        read: asyncio.Task[Any] | None = None
        try:
            while True:
                if read is None:
                    read = asyncio.ensure_future(call.read())
                now = loop.time()
                # nothing owed: look again after one stall window (a result owed from a later write
                # falls due after that window ends, so it is never missed)
                deadline = served_at if not served else now + stall.stall_s
                owed = stall.deadline()
                if owed is not None:
                    deadline = min(deadline, owed)
                await asyncio.wait({read}, timeout=max(0.0, deadline - now))
                if not read.done():
                    now = loop.time()
                    if not served and now >= served_at:
                        served = True
                        leg.mark_served()
                    if stall.check(now):
                        raise StreamStalled(f"no result for {stall.stall_s:g} s although voiced audio was sent")
                    continue
                msg, read = read.result(), None
                if msg is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                if not served:
                    served = True
                    leg.mark_served()
                stall.result()
                leg.handle(msg, self.offset)
        finally:
            if read is not None:
                if read.done():
                    if not read.cancelled():
                        read.exception()  # retrieved: the call's error is reported by the caller
                else:
                    read.cancel()
