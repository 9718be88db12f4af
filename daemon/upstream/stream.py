"""One DeepfakeDetection stream per analysed leg, kept alive across upstream failures.

The ingest side calls `send_chunk()` (synchronous, never blocks): chunks wait in a bounded queue
(drop-oldest, counted). One supervisor task per leg runs attempts; each attempt has a writer task
(config first, then chunks, cid + token on every message) and a reader task (results → typed
events → `on_result`). On UNAVAILABLE, a reset connection or a stall (nothing read for
stall_timeout_s while audio was written) the attempt's call is cancelled, a new one opened with
backoff and jitter, and the chunks not yet covered by a result are replayed from a bounded buffer,
in order; a new stream never gets a chunk twice, and its result times are moved to call time.
UNAUTHENTICATED / PERMISSION_DENIED / INVALID_ARGUMENT are not retried: the leg stays unanalysed
and says so loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import grpc

from daemon.clock import Clock
from daemon.config import UpstreamConfig, UpstreamCredentials
from daemon.model import UPSTREAM_RATE_HZ, DeepfakeResult, LegRef
from daemon.ops.metrics import CHUNK_EXEMPLAR_OVER_S, Metrics, exemplar
from daemon.upstream.channels import ChannelPool, PooledChannel
from daemon.upstream.results import audio_message, config_message, map_stream_result

log = logging.getLogger("spoofwatch.upstream")

FATAL_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
               grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED}
SIMULATED_KEY = "x-spoofwatch-simulated"
#: A stream counts as served (state "streaming") at its first result, or once it stayed open this long
#: (capped by stall_timeout_s). Initial metadata proves nothing: a refusing server may send it just before
#: its error status (the simulator does), and a trailers-only refusal yields empty metadata.
SERVED_AFTER_S = 1.0


#: A chunk on its way: (index, start_s, end_s, data, received_at), start/end in leg (call) time. A
#: plain tuple, not a dataclass: tuples of atomic values drop out of the garbage collector's lists
#: (40 kept per leg for replay were 12k tracked objects at 300 calls, scanned by every full collection).
_Chunk = tuple[int, float, float, bytes, float]
_INDEX: Final = 0
_START: Final = 1
_END: Final = 2
_DATA: Final = 3
_RECEIVED: Final = 4


class _Stall(Exception):
    pass


class _Fatal(Exception):
    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class LegStream:
    def __init__(self, pool: ChannelPool, creds: UpstreamCredentials, leg: LegRef, *, upstream: UpstreamConfig,
                 queue_chunks: int, replay_chunks: int, metrics: Metrics, clock: Clock,
                 on_result: Callable[[DeepfakeResult], None],
                 on_state: Callable[[LegStream, str], None] | None = None, force_simulated: bool = False,
                 rng: random.Random | None = None) -> None:
        self.pool = pool
        self.creds = creds
        self.leg = leg
        self.cfg = upstream
        self.metrics = metrics
        self.clock = clock
        self.on_result = on_result
        self.on_state = on_state
        self.force_simulated = force_simulated
        self.rng = rng or random.Random()
        self._queue: deque[_Chunk] = deque()
        self._queue_max = queue_chunks
        self._replay: deque[_Chunk] = deque(maxlen=max(replay_chunks, 0) or None)
        self._replay_enabled = replay_chunks > 0
        # (chunk end_s, written_at) for result latency: 2 min of audio covers any result read in time
        self._written: deque[tuple[float, float]] = deque(maxlen=480)
        self._exemplar = exemplar(call_id=leg.call_id, leg=leg.leg)  # latency observations → which call
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._next_index = 0
        self._next_time = 0.0
        self._covered_until = 0.0  # call time up to which results arrived
        self._header_simulated = False
        self.state = "idle"
        self.pid: int | None = None
        self.pids: list[int] = []
        self.chunks_sent = 0
        self.attempts = 0
        self.analysed = False
        self.last_error = ""

    @property
    def simulated(self) -> bool:
        return self.force_simulated or self._header_simulated

    # producer side -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"upstream:{self.leg}")

    def send_chunk(self, chunk: bytes, received_at: float) -> None:
        duration = len(chunk) / 2 / UPSTREAM_RATE_HZ
        item: _Chunk = (self._next_index, self._next_time, self._next_time + duration, chunk, received_at)
        self._next_index += 1
        self._next_time += duration
        if self.state in ("auth_failed", "failed") or self._closing:
            self.metrics.drops.labels("upstream", "upstream_failed" if not self._closing else "leg_closed").inc()
            return
        if len(self._queue) >= self._queue_max:
            self._queue.popleft()
            self.metrics.drops.labels("upstream", "queue_full").inc()
        self._queue.append(item)
        self._wake.set()

    async def finish(self, timeout: float) -> None:
        """Send what is queued, half-close, wait for the last results (bounded by `timeout`)."""
        self._closing = True
        self._wake.set()
        if self._task is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._task)
        except TimeoutError:
            log.warning("no final results within %.1f s", timeout, extra={"call_id": self.leg.call_id,
                                                                         "leg": self.leg.leg})
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
        if self.state not in ("auth_failed", "failed"):
            self.state = "finished"

    # supervision -------------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(self, state)
            except Exception:
                log.exception("state callback failed")

    async def _supervise(self) -> None:
        delay_ms = float(self.cfg.retry_initial_ms)
        while True:
            if self._closing and not self._queue and self.attempts > 0:
                return  # a broke stream at leg end with nothing left to (re)send
            channel = self.pool.acquire()
            if channel is None:
                self._set_state("retrying")
                await self._backoff(delay_ms)
                delay_ms = min(delay_ms * 2, self.cfg.retry_max_ms)
                continue
            self.attempts += 1
            try:
                await self._attempt(channel)
                self.pool.record_success(channel)
                self._set_state("finished")
                return
            except _Fatal as exc:
                self.pool.record_success(channel)  # the connection works; the request is refused
                self.metrics.upstream_errors.labels(exc.code.name).inc()
                self.last_error = f"{exc.code.name}: {exc}"
                log.error("upstream refused the stream (%s): %s; this leg is NOT analysed and will not be retried",
                          exc.code.name, exc, extra={"call_id": self.leg.call_id, "leg": self.leg.leg})
                dropped = len(self._queue)
                self._queue.clear()
                if dropped:
                    self.metrics.drops.labels("upstream", "upstream_failed").inc(dropped)
                self._set_state("auth_failed" if exc.code is not grpc.StatusCode.INVALID_ARGUMENT else "failed")
                return
            except (grpc.aio.AioRpcError, _Stall) as exc:
                code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "STALLED"
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else "no result while audio flowed"
                self.metrics.upstream_errors.labels(code).inc()
                self.pool.record_failure(channel)
                self.last_error = f"{code}: {detail}"
                log.warning("upstream stream broke (%s: %s); reopening with replay", code, detail,
                            extra={"call_id": self.leg.call_id, "leg": self.leg.leg})
                self._requeue_for_replay()
                self._set_state("retrying")
                self.metrics.upstream_reconnects.inc()
                await self._backoff(delay_ms)
                delay_ms = min(delay_ms * 2, self.cfg.retry_max_ms)
            finally:
                self.pool.release(channel)

    async def _backoff(self, delay_ms: float) -> None:
        jittered = delay_ms * (0.5 + self.rng.random())  # ±50 % jitter: legs do not reconnect in lockstep
        await asyncio.sleep(jittered / 1000)

    def _requeue_for_replay(self) -> None:
        """Put the written-but-uncovered chunks back in front of the queue, in order, once each."""
        if not self._replay_enabled:
            return
        queued = {c[_INDEX] for c in self._queue}
        replay = [c for c in self._replay if c[_END] > self._covered_until + 1e-9 and c[_INDEX] not in queued]
        self._replay.clear()
        for c in reversed(replay):
            self._queue.appendleft(c)
        if replay:
            self.metrics.upstream_replayed_chunks.inc(len(replay))
        while len(self._queue) > self._queue_max + len(replay):  # keep the bound, oldest audio goes first
            self._queue.popleft()
            self.metrics.drops.labels("upstream", "queue_full").inc()

    async def _attempt(self, channel: PooledChannel) -> None:
        call = channel.stub.DeepfakeDetection(timeout=None)
        self.metrics.upstream_streams.inc()
        self.metrics.upstream_streams_active.inc()
        offset = self._queue[0][_START] if self._queue else self._next_time
        # loop time of the first chunk written since the last result (0: none), and how many since
        progress = {"first_pending": 0.0, "pending": 0}
        writer = asyncio.create_task(self._write(call, progress), name=f"upstream-writer:{self.leg}")
        reader = asyncio.create_task(self._read(call, offset, progress), name=f"upstream-reader:{self.leg}")
        try:
            done, _ = await asyncio.wait({writer, reader}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done and reader.exception() is not None:
                raise await self._final_status(call, reader.exception())
            if reader in done and not writer.done():
                raise _Stall("the stream ended before the leg did")
            try:
                await reader  # the writer half-closed (or stopped on a failed write): the reader has the status
            except Exception as exc:
                raise await self._final_status(call, exc) from None
            if not self._closing or self._queue:
                raise _Stall("the stream ended before the leg did")
        finally:
            self.metrics.upstream_streams_active.dec()
            for t in (writer, reader):
                if not t.done():
                    t.cancel()
            for t in (writer, reader):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            call.cancel()  # no-op when finished; otherwise the old call would leak

    async def _final_status(self, call: Any, exc: BaseException | None) -> BaseException:
        """Writing to (or half-closing) a call the server already ended fails with a generic INTERNAL
        error, sometimes before the call itself reports its end: wait briefly for the call's own final
        status and prefer it (e.g. UNAUTHENTICATED, which must not be retried)."""
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in FATAL_CODES:
            return self._classify(exc)
        try:
            async with asyncio.timeout(1.0):
                code = await call.code()
                details = await call.details()
        except (TimeoutError, Exception):
            code = None
        if code is not None and code in FATAL_CODES:
            return _Fatal(code, details or "")
        return self._classify(exc)

    @staticmethod
    def _classify(exc: BaseException | None) -> BaseException:
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in FATAL_CODES:
            return _Fatal(exc.code(), exc.details() or "")
        return exc if exc is not None else RuntimeError("unknown upstream failure")

    async def _write(self, call: Any, progress: dict[str, float]) -> None:
        """A failed write ends the writer quietly: the server's own status (why the call ended: e.g.
        UNAUTHENTICATED) reaches the reader, which decides whether to retry."""
        try:
            await self._write_all(call, progress)
        except grpc.aio.AioRpcError as exc:
            log.debug("write failed (%s); the reader reports the call's status", exc.code().name)
        except (grpc.aio.UsageError, asyncio.InvalidStateError):
            pass

    async def _write_all(self, call: Any, progress: dict[str, float]) -> None:
        await call.write(config_message(self.creds, self.cfg.result_level))
        while True:
            while self._queue:
                item = self._queue.popleft()
                try:
                    await call.write(audio_message(self.creds, item[_DATA]))
                except BaseException:
                    # not (surely) on this stream: it goes to the next one, in order (it follows every
                    # replayed chunk, all written before it); dropping it would leave a hole in the leg
                    self._queue.appendleft(item)
                    raise
                now = self.clock.monotonic()
                latency = max(0.0, now - item[_RECEIVED])
                if latency > CHUNK_EXEMPLAR_OVER_S:
                    self.metrics.chunk_latency.observe(latency, self._exemplar)
                else:
                    self.metrics.chunk_latency.observe(latency)
                self.metrics.chunks.inc()
                self.chunks_sent += 1
                self._written.append((item[_END], now))
                if self._replay_enabled:
                    self._replay.append(item)
                if not progress["pending"]:
                    progress["first_pending"] = asyncio.get_running_loop().time()
                progress["pending"] += 1
            if self._closing:
                await call.done_writing()
                return
            self._wake.clear()
            await self._wake.wait()

    async def _read(self, call: Any, offset: float, progress: dict[str, float]) -> None:
        # initial_metadata() answers empty metadata on a dead connection; wait_for_connection() raises
        await call.wait_for_connection()
        metadata = await call.initial_metadata()
        if metadata is not None:
            for key, _ in metadata:
                if key == SIMULATED_KEY:
                    self._header_simulated = True
        loop = asyncio.get_running_loop()
        stall_s = self.cfg.stall_timeout_s
        served_at = loop.time() + min(SERVED_AFTER_S, stall_s)
        served = False
        # One read stays pending across the stall checks: grpc.aio cancels the whole call when a read
        # is cancelled, so a read must never be given up (e.g. by a timeout) while the call should live.
        read: asyncio.Task[Any] | None = None
        try:
            while True:
                if read is None:
                    read = asyncio.ensure_future(call.read())
                now_l = loop.time()
                deadline = served_at if not served else now_l + stall_s
                if progress["pending"]:
                    deadline = min(deadline, progress["first_pending"] + stall_s)
                await asyncio.wait({read}, timeout=max(0.0, deadline - now_l))
                if not read.done():
                    now_l = loop.time()
                    if not served and now_l >= served_at:
                        served = True
                        self._set_state("streaming")
                    if progress["pending"] and now_l - progress["first_pending"] >= stall_s:
                        raise _Stall()
                    continue
                msg, read = read.result(), None
                if msg is grpc.aio.EOF:  # type: ignore[attr-defined]
                    return
                if not served:
                    served = True
                    self._set_state("streaming")
                self._handle(msg, offset, progress)
        finally:
            if read is not None:
                if read.done():
                    if not read.cancelled():
                        read.exception()  # retrieved: the call's error is reported by the caller
                else:
                    read.cancel()

    def _handle(self, msg: Any, offset: float, progress: dict[str, float]) -> None:
        """One StreamResult: typed results to `on_result`, malformed items counted and logged."""
        now = self.clock.monotonic()
        progress["pending"] = 0
        if msg.pid and msg.pid != self.pid:
            self.pid = msg.pid
            self.pids.append(msg.pid)
        self.analysed = True
        results, errors = map_stream_result(msg, self.leg, offset, self.simulated, now)
        for err in errors:
            self.metrics.drops.labels("upstream", "malformed_result").inc()
            log.warning("malformed result: %s", err, extra={"call_id": self.leg.call_id, "leg": self.leg.leg})
        for r in results:
            self._covered_until = max(self._covered_until, r.end_s)
            self.metrics.results.labels(r.label, r.level.value, "true" if r.simulated else "false").inc()
            written_at = self._written_time(r.end_s)
            if written_at is not None:
                self.metrics.result_latency.observe(max(0.0, now - written_at), self._exemplar)
            try:
                self.on_result(r)
            except Exception:
                log.exception("result handler failed", extra={"call_id": self.leg.call_id, "leg": self.leg.leg})

    def _written_time(self, end_s: float) -> float | None:
        """When the chunk holding call time `end_s` was written (the earliest chunk ending at or after it)."""
        found: float | None = None
        for chunk_end, written_at in reversed(self._written):
            if chunk_end + 1e-6 < end_s:
                break
            found = written_at
        return found
