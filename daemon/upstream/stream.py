"""One DeepfakeDetection stream per analysed leg, kept alive across upstream failures.

The ingest side calls `send_chunk()` (synchronous, never blocks): chunks wait in a bounded queue
(drop-oldest, counted; chunks.py). One supervisor task per leg runs attempts (attempt.py: a writer
and a reader task on one call). On UNAVAILABLE, a reset connection or a stall (a result owed for
voiced audio and none read for stall_timeout_s; silence owes nothing, see stall.py) the attempt's
call is cancelled, a new one opened with backoff and jitter, and the chunks not yet covered by a
result are replayed, in order; a new stream never gets a chunk twice, and its result times are moved
to call time. UNAUTHENTICATED / PERMISSION_DENIED / INVALID_ARGUMENT and a refused TLS handshake are
not retried: the leg stays unanalysed and says so loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Callable
from typing import Any

import grpc

from daemon.clock import Clock
from daemon.config import UpstreamConfig, UpstreamCredentials
from daemon.model import UPSTREAM_RATE_HZ, DeepfakeResult, LegRef
from daemon.ops.metrics import CHUNK_EXEMPLAR_OVER_S, Metrics, exemplar
from daemon.upstream.attempt import StreamAttempt, StreamRefused, StreamStalled
from daemon.upstream.channels import ChannelPool, PooledChannel
from daemon.upstream.chunks import RECEIVED, START, Chunk, LegChunks
from daemon.upstream.results import map_stream_result
from daemon.upstream.stall import StallWatch

log = logging.getLogger("spoofwatch.upstream")


class StreamState(enum.StrEnum):
    """A leg stream's state; the values are what health detail, logs and `on_state` callers see."""

    IDLE = "idle"
    STREAMING = "streaming"  # served: a result read, or open for a while without an error
    RETRYING = "retrying"  # between a failed stream (or no channel) and the next
    FINISHED = "finished"
    AUTH_FAILED = "auth_failed"  # UNAUTHENTICATED / PERMISSION_DENIED: not retried
    TLS_FAILED = "tls_failed"  # the TLS handshake was refused (untrusted certificate, wrong name): not retried
    FAILED = "failed"  # INVALID_ARGUMENT / UNIMPLEMENTED: not retried


#: states after which the leg sends nothing more
GIVEN_UP = frozenset({StreamState.AUTH_FAILED, StreamState.TLS_FAILED, StreamState.FAILED})


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
        self.chunks = LegChunks(queue_chunks, replay_chunks, metrics)
        self.stall = StallWatch.for_level(upstream.stall_timeout_s, upstream.stall_voiced_dbfs, upstream.result_level)
        self._exemplar = exemplar(call_id=leg.call_id, leg=leg.leg)  # latency observations → which call
        self.wake = asyncio.Event()  # set when there is something for the writer to do
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._next_index = 0
        self._next_time = 0.0
        self._header_simulated = False
        self.state = StreamState.IDLE
        self.pid: int | None = None
        self.pids: list[int] = []
        self.chunks_sent = 0
        self.attempts = 0
        self.analysed = False
        self.last_error = ""

    @property
    def simulated(self) -> bool:
        return self.force_simulated or self._header_simulated

    @property
    def closing(self) -> bool:
        return self._closing

    # producer side -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"upstream:{self.leg}")

    def send_chunk(self, chunk: bytes, received_at: float) -> None:
        duration = len(chunk) / 2 / UPSTREAM_RATE_HZ
        item: Chunk = (self._next_index, self._next_time, self._next_time + duration, chunk, received_at)
        self._next_index += 1
        self._next_time += duration
        if self.state in GIVEN_UP or self._closing:
            self.metrics.drops.labels("upstream", "upstream_failed" if not self._closing else "leg_closed").inc()
            return
        self.chunks.push(item)
        self.wake.set()

    async def finish(self, timeout: float) -> None:
        """Send what is queued, half-close, wait for the last results (bounded by `timeout`)."""
        self._closing = True
        self.wake.set()
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
        if self.state not in GIVEN_UP:
            self.state = StreamState.FINISHED

    # supervision -------------------------------------------------------------------------------
    def _set_state(self, state: StreamState) -> None:
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(self, state)
            except Exception:
                log.exception("state callback failed")

    async def _supervise(self) -> None:
        delay_ms = float(self.cfg.retry_initial_ms)
        while True:
            if self._closing and not self.chunks.queue and self.attempts > 0:
                return  # a broke stream at leg end with nothing left to (re)send
            channel = self.pool.acquire()
            if channel is None:
                self._set_state(StreamState.RETRYING)
                await self._backoff(delay_ms)
                delay_ms = min(delay_ms * 2, self.cfg.retry_max_ms)
                continue
            self.attempts += 1
            try:
                await self._attempt(channel)
                self.pool.record_success(channel)
                self._set_state(StreamState.FINISHED)
                return
            except StreamRefused as exc:
                self._refused(channel, exc)
                return
            except (grpc.aio.AioRpcError, StreamStalled) as exc:
                code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "STALLED"
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                self.metrics.upstream_errors.labels(code).inc()
                self.pool.record_failure(channel)
                self.last_error = f"{code}: {detail}"
                log.warning("upstream stream broke (%s: %s); reopening with replay", code, detail,
                            extra={"call_id": self.leg.call_id, "leg": self.leg.leg})
                replayed = self.chunks.requeue_for_replay()
                if replayed:
                    self.metrics.upstream_replayed_chunks.inc(replayed)
                self._set_state(StreamState.RETRYING)
                self.metrics.upstream_reconnects.inc()
                await self._backoff(delay_ms)
                delay_ms = min(delay_ms * 2, self.cfg.retry_max_ms)
            finally:
                self.pool.release(channel)

    def _refused(self, channel: PooledChannel, exc: StreamRefused) -> None:
        if exc.tls:
            self.pool.record_failure(channel)  # the connection itself does not work
            state = StreamState.TLS_FAILED
            why = (f"the TLS handshake with {self.pool.target} was refused (check [upstream] ca_file and "
                   "tls_server_name, or tls)")
        else:
            self.pool.record_success(channel)  # the connection works; the request is refused
            state = StreamState.FAILED if exc.code is grpc.StatusCode.INVALID_ARGUMENT else StreamState.AUTH_FAILED
            why = "upstream refused the stream"
        self.metrics.upstream_errors.labels(exc.label).inc()
        self.last_error = f"{exc.label}: {exc}"
        log.error("%s (%s): %s; this leg is NOT analysed and will not be retried", why, exc.label, exc,
                  extra={"call_id": self.leg.call_id, "leg": self.leg.leg})
        dropped = self.chunks.clear()
        if dropped:
            self.metrics.drops.labels("upstream", "upstream_failed").inc(dropped)
        self._set_state(state)

    async def _backoff(self, delay_ms: float) -> None:
        jittered = delay_ms * (0.5 + self.rng.random())  # ±50 % jitter: legs do not reconnect in lockstep
        await asyncio.sleep(jittered / 1000)

    async def _attempt(self, channel: PooledChannel) -> None:
        call = channel.stub.DeepfakeDetection(timeout=None)
        self.metrics.upstream_streams.inc()
        self.metrics.upstream_streams_active.inc()
        offset = self.chunks.queue[0][START] if self.chunks.queue else self._next_time
        try:
            await StreamAttempt(self, call, offset).run()
        finally:
            self.metrics.upstream_streams_active.dec()

    # called by the attempt -----------------------------------------------------------------------
    def mark_served(self) -> None:
        self._set_state(StreamState.STREAMING)

    def mark_simulated(self) -> None:
        self._header_simulated = True

    def chunk_written(self, item: Chunk, voiced: bool = True) -> None:
        now = self.clock.monotonic()
        latency = max(0.0, now - item[RECEIVED])
        if latency > CHUNK_EXEMPLAR_OVER_S:
            self.metrics.chunk_latency.observe(latency, self._exemplar)
        else:
            self.metrics.chunk_latency.observe(latency)
        self.metrics.chunks.inc()
        self.chunks_sent += 1
        self.chunks.written(item, now, voiced)

    def handle(self, msg: Any, offset: float) -> None:
        """One StreamResult: typed results to `on_result`, malformed items counted and logged."""
        now = self.clock.monotonic()
        if msg.pid and msg.pid != self.pid:
            self.pid = msg.pid
            self.pids.append(msg.pid)
        self.analysed = True
        results, errors = map_stream_result(msg, self.leg, offset, self.simulated, now)
        for err in errors:
            self.metrics.drops.labels("upstream", "malformed_result").inc()
            log.warning("malformed result: %s", err, extra={"call_id": self.leg.call_id, "leg": self.leg.leg})
        for r in results:
            self.chunks.covered(r.end_s)
            self.metrics.results.labels(r.label, r.level.value, "true" if r.simulated else "false").inc()
            written_at = self.chunks.written_time(r.end_s)
            if written_at is not None:
                self.metrics.result_latency.observe(max(0.0, now - written_at), self._exemplar)
            try:
                self.on_result(r)
            except Exception:
                log.exception("result handler failed", extra={"call_id": self.leg.call_id, "leg": self.leg.leg})
