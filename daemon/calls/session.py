"""One call (`CallSession`, a CallHandle) and its analysed legs (`LegPipeline`, a LegSink).

A leg pipeline is the data path of one speaker: encoded payload → decode → one soxr stream →
exact 8000-byte chunks → that leg's own upstream stream → verdict policy → alerts. Ingests call the
sink methods synchronously from their socket loops; nothing here awaits on that path. The async
part (waiting for a leg's final results, the summary) runs in `CallSession.finish()`, a task owned
by the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from daemon.audio.path import LegAudioPath
from daemon.clock import Clock
from daemon.config import PolicyConfig
from daemon.model import AlertType, AudioFormat, CallInfo, Codec, DeepfakeResult, LegRef
from daemon.ops.live import LiveHub
from daemon.ops.metrics import Metrics
from daemon.policy.payloads import call_summary_data, spoof_detected_data
from daemon.policy.verdict import AlertDecision, LegVerdictPolicy

log = logging.getLogger("spoofwatch.calls")

#: A leg stream's own finish bound exceeds the session's by this much, so the session's bound decides.
_STREAM_GRACE_S = 1.0


class UpstreamLeg(Protocol):
    """What a leg needs of its upstream stream (daemon.upstream.stream.LegStream)."""

    def start(self) -> None: ...
    def send_chunk(self, chunk: bytes, received_at: float) -> None: ...
    async def finish(self, timeout: float) -> None: ...
    async def aclose(self) -> None: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def simulated(self) -> bool: ...

    @property
    def analysed(self) -> bool: ...


#: (leg, on_result) → a started-later upstream stream for that leg.
StreamFactory = Callable[[LegRef, Callable[[DeepfakeResult], None]], UpstreamLeg]


class AlertSink(Protocol):
    def emit(self, event_type: str, data: dict[str, Any], *, decided_at: float | None) -> None:
        """Commit an event durably (outbox) and wake the sender. Synchronous."""
        ...


@dataclass
class CallContext:
    """What every call of one daemon shares."""

    metrics: Metrics
    clock: Clock
    streams: StreamFactory
    alerts: AlertSink
    policy: PolicyConfig
    detector_host: str
    upstream_target: str
    final_results_timeout_s: float
    #: the live operator page's hub (daemon.ops.live), fed synchronously; None: no page
    live: LiveHub | None = None


class LegPipeline:
    """A LegSink: audio of one leg in, chunks to its upstream stream, results into its policy."""

    def __init__(self, call: CallSession, name: str, fmt: AudioFormat) -> None:
        self.call = call
        self.ref = LegRef(call.info.call_id, name)
        self.fmt = fmt
        self._ctx = call.ctx
        self._path = LegAudioPath(fmt)
        self.policy = LegVerdictPolicy(call.ctx.policy, self.ref)
        self.stream = call.ctx.streams(self.ref, self._on_result)
        self.closed = False
        self.audio_s = 0.0
        #: the stream ended (its last results read) within final_results_timeout_s of the call's end
        self.final_results_received = False
        self.released = False  # its stream closed and legs_active decremented, once
        self._ingest = call.info.ingest
        self._bytes_per_s = _bytes_per_second(fmt)

    def start(self) -> None:
        self.stream.start()

    def _send(self, chunks: list[bytes], received_at: float) -> None:
        for chunk in chunks:
            self.stream.send_chunk(chunk, received_at)

    # LegSink -----------------------------------------------------------------------------------
    def push(self, payload: bytes, received_at: float) -> None:
        if self.closed:
            self._ctx.metrics.drops.labels(self._ingest, "leg_closed").inc()
            return
        try:
            chunks = self._path.push(payload)
        except ValueError as exc:  # DecodeError: a bad payload is dropped, the leg goes on
            self._ctx.metrics.drops.labels(self._ingest, "decode_error").inc()
            log.debug("dropped undecodable payload on %s: %s", self.ref, exc)
            return
        if self._bytes_per_s:
            self.audio_s += len(payload) / self._bytes_per_s
        if chunks:  # one payload in ~12 completes a chunk: the others stop here
            self._send(chunks, received_at)

    def push_pcm(self, samples: npt.NDArray[np.int16], rate: int, received_at: float) -> None:
        if self.closed:
            self._ctx.metrics.drops.labels(self._ingest, "leg_closed").inc()
            return
        self.audio_s += len(samples) / rate
        self._send(self._path.push_pcm(samples, rate), received_at)

    def push_silence(self, seconds: float, received_at: float) -> None:
        if self.closed or seconds <= 0:
            return
        self.audio_s += seconds
        self._ctx.metrics.gap_fill_seconds.labels(self._ingest).inc(seconds)
        self._send(self._path.push_silence(seconds), received_at)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._send(self._path.flush(), self._ctx.clock.monotonic())
        self._ctx.metrics.audio_in_seconds.labels(self._ingest).inc(self.audio_s)
        if self._ctx.live is not None:
            self._ctx.live.leg_closed(self.ref.call_id, self.ref.leg)

    # upstream → policy -------------------------------------------------------------------------
    def _on_result(self, result: DeepfakeResult) -> None:
        if self._ctx.live is not None:
            self._ctx.live.result(result)
        for decision in self.policy.observe(result):
            self.call.raise_alert(decision)


def _bytes_per_second(fmt: AudioFormat) -> float:
    if fmt.codec in (Codec.PCMU, Codec.PCMA):
        return float(fmt.sample_rate * fmt.channels)
    if fmt.codec in (Codec.L16_BE, Codec.L16_LE):
        return float(fmt.sample_rate * fmt.channels * 2)
    return 0.0  # compressed: duration is counted from decoded audio only


class CallSession:
    """A CallHandle. Created by the registry on admission; `finish()` runs once the call ended."""

    def __init__(self, info: CallInfo, ctx: CallContext) -> None:
        self._info = info
        self.ctx = ctx
        self.legs: dict[str, LegPipeline] = {}
        self.started_mono = ctx.clock.monotonic()
        self.started_wall = ctx.clock.wall()
        self.ended_mono: float | None = None
        self.end_reason = ""
        self.dtmf_digits: list[str] = []
        self.alerts_sent = 0
        self.ended = asyncio.Event()

    @property
    def info(self) -> CallInfo:
        return self._info

    def open_leg(self, leg: str, fmt: AudioFormat) -> LegPipeline:
        existing = self.legs.get(leg)
        if existing is not None:
            return existing
        if self.ended_mono is not None:
            raise RuntimeError(f"call {self._info.call_id} already ended")
        pipeline = LegPipeline(self, leg, fmt)
        self.legs[leg] = pipeline
        pipeline.start()
        self.ctx.metrics.legs_active.labels(self._info.ingest).inc()
        if self.ctx.live is not None:
            self.ctx.live.leg_opened(self._info.call_id, leg, fmt.codec.value, fmt.sample_rate)
        log.info("leg opened", extra={"call_id": self._info.call_id, "leg": leg, "codec": fmt.codec.value,
                                      "rate": fmt.sample_rate})
        return pipeline

    def dtmf(self, leg: str, digit: str) -> None:
        if len(self.dtmf_digits) < 64:
            self.dtmf_digits.append(digit)

    def end(self, reason: str) -> None:
        if self.ended_mono is not None:
            return
        self.ended_mono = self.ctx.clock.monotonic()
        self.end_reason = reason
        for pipeline in self.legs.values():
            pipeline.close()
        if self.ctx.live is not None:
            self.ctx.live.call_ended(self._info.call_id, reason)
        self.ended.set()

    # alerts ------------------------------------------------------------------------------------
    def raise_alert(self, decision: AlertDecision) -> None:
        data = spoof_detected_data(self._info, decision, detector_host=self.ctx.detector_host,
                                   upstream_target=self.ctx.upstream_target)
        wall_decided = self.ctx.clock.wall() - max(0.0, self.ctx.clock.monotonic() - decision.result_received_at)
        self.ctx.alerts.emit(AlertType.SPOOF_DETECTED.value, data, decided_at=wall_decided)
        self.alerts_sent += 1
        if self.ctx.live is not None:
            self.ctx.live.alert_decided(decision)
        log.warning("spoofed voice detected", extra={"call_id": self._info.call_id, "leg": decision.leg.leg,
                                                     "posterior": decision.posterior, "reason": decision.reason,
                                                     "simulated": decision.simulated})

    async def finish(self) -> str:
        """Wait for every leg's final results at once (bounded by final_results_timeout_s overall), then
        emit the call summary; returns the outcome. The summary ALWAYS goes out: also when this task is
        cancelled (the registry cutting stragglers at shutdown), with what is known by then; legs whose
        final results did not arrive say so (`final_results_received: false`)."""
        try:
            await self.ended.wait()
            await self._await_final_results(self.ctx.final_results_timeout_s)
        finally:
            if self.ended_mono is None:
                self.end("shutdown")  # cancelled before the call ended: close the legs, keep their tails
            outcome = self.emit_summary()  # AlertSink.emit is synchronous: no cancel can cut it short
            await self._release_legs()  # no-op unless cancelled before the legs were awaited
        return outcome

    async def _await_final_results(self, timeout: float) -> None:
        """All legs in parallel. Each stream gets a little more than `timeout` of its own, so this bound
        decides: a leg counts as complete only if its stream really ended (last results read) in time."""
        loop = asyncio.get_running_loop()
        waits = {loop.create_task(p.stream.finish(timeout + _STREAM_GRACE_S), name=f"finish:{p.ref}"): p
                 for p in self.legs.values()}
        try:
            if not waits:
                return
            done, pending = await asyncio.wait(waits, timeout=timeout)
            for task in done:
                pipeline = waits[task]
                exc = task.exception()
                if exc is not None:
                    log.error("leg stream did not finish cleanly", exc_info=exc,
                              extra={"call_id": self._info.call_id, "leg": pipeline.ref.leg})
                else:
                    pipeline.final_results_received = True
            if pending:
                log.warning("no final results within %.1f s; the summary goes out without them", timeout,
                            extra={"call_id": self._info.call_id, "legs": sorted(waits[t].ref.leg for t in pending)})
        finally:
            # cancel-and-await, also when this task itself is being cancelled
            for task in waits:
                task.cancel()
            for task in waits:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._release_legs()

    async def _release_legs(self) -> None:
        """Close every leg's upstream stream once (legs_active follows)."""
        for pipeline in self.legs.values():
            if pipeline.released:
                continue
            pipeline.released = True
            try:
                await pipeline.stream.aclose()
            except Exception:
                log.exception("leg stream did not close cleanly",
                              extra={"call_id": self._info.call_id, "leg": pipeline.ref.leg})
            self.ctx.metrics.legs_active.labels(self._info.ingest).dec()

    def emit_summary(self) -> str:
        end = self.ended_mono if self.ended_mono is not None else self.ctx.clock.monotonic()
        duration = max(0.0, end - self.started_mono)
        summaries = {}
        for name, pipeline in self.legs.items():
            summary = pipeline.policy.summary()
            summary.analysed = pipeline.stream.analysed
            summary.simulated = summary.simulated or pipeline.stream.simulated
            if pipeline.stream.pid is not None and pipeline.stream.pid not in summary.pids:
                summary.pids.append(pipeline.stream.pid)
            if not summary.analysed:
                self.ctx.metrics.legs_unanalysed.inc()
            summaries[name] = summary
        data = call_summary_data(self._info, summaries, duration_s=duration, started_at=self.started_wall,
                                 ended_at=self.started_wall + duration, end_reason=self.end_reason or "ended",
                                 dtmf=list(self.dtmf_digits))
        for name, leg_data in data["legs"].items():
            leg_data["final_results_received"] = self.legs[name].final_results_received
        self.ctx.alerts.emit(AlertType.SUMMARY.value, data, decided_at=None)
        if any(s.alerted for s in summaries.values()):
            outcome = "alerted"
        elif summaries and all(not s.analysed for s in summaries.values()):
            outcome = "unanalysed"
        else:
            outcome = "clean"
        log.info("call ended", extra={"call_id": self._info.call_id, "outcome": outcome,
                                      "duration_s": round(duration, 3), "reason": self.end_reason})
        return outcome
