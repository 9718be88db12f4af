"""The call registry: admits calls (limits), owns each call's finishing task, drains on shutdown.

One failing call never harms another: each call's finish runs in its own task whose exceptions are
logged and counted, never propagated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from daemon.calls.api import CallRefused
from daemon.calls.session import CallContext, CallSession
from daemon.model import CallInfo

log = logging.getLogger("spoofwatch.calls")


class CallRegistry:
    """A CallAdmission for every ingest."""

    def __init__(self, ctx: CallContext, *, max_calls: int, per_ingest_limits: dict[str, int] | None = None) -> None:
        self.ctx = ctx
        self.max_calls = max_calls
        self.per_ingest_limits = dict(per_ingest_limits or {})
        self.calls: dict[str, CallSession] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    # admission ---------------------------------------------------------------------------------
    def admit(self, info: CallInfo) -> CallSession:
        reason = self._refusal(info)
        if reason is not None:
            self.ctx.metrics.calls_refused.labels(info.ingest, reason).inc()
            raise CallRefused(reason, f"call {info.call_id} refused: {reason}")
        session = CallSession(info, self.ctx)
        self.calls[info.call_id] = session
        self.ctx.metrics.calls_active.labels(info.ingest).inc()
        if self.ctx.live is not None:
            self.ctx.live.call_started(info)
        self._idle.clear()
        self._tasks[info.call_id] = asyncio.get_running_loop().create_task(
            self._supervise(session), name=f"call:{info.call_id}"
        )
        log.info("call admitted", extra={"call_id": info.call_id, "ingest": info.ingest})
        return session

    def _refusal(self, info: CallInfo) -> str | None:
        if not self._accepting:
            return "shutting_down"
        if info.call_id in self.calls:
            return "duplicate_call_id"
        if len(self.calls) >= self.max_calls:
            return "max_calls"
        limit = self.per_ingest_limits.get(info.ingest)
        if limit is not None and sum(1 for c in self.calls.values() if c.info.ingest == info.ingest) >= limit:
            return "ingest_max_calls"
        return None

    def update_limits(self, *, max_calls: int, per_ingest_limits: dict[str, int]) -> None:
        """SIGHUP: new limits apply to new calls; running calls are never cut."""
        self.max_calls = max_calls
        self.per_ingest_limits = dict(per_ingest_limits)

    # supervision -------------------------------------------------------------------------------
    async def _supervise(self, session: CallSession) -> None:
        call_id = session.info.call_id
        outcome = "error"
        try:
            outcome = await session.finish()
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception:
            log.exception("call failed", extra={"call_id": call_id})
        finally:
            self.ctx.metrics.calls.labels(session.info.ingest, outcome).inc()
            self.ctx.metrics.calls_active.labels(session.info.ingest).dec()
            if self.ctx.live is not None:
                self.ctx.live.call_finished(call_id, outcome, analysed={name: leg.stream.analysed
                                                                        for name, leg in session.legs.items()})
            self.calls.pop(call_id, None)
            self._tasks.pop(call_id, None)
            if not self.calls:
                self._idle.set()

    # shutdown ----------------------------------------------------------------------------------
    def stop_accepting(self) -> None:
        self._accepting = False

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def drain(self, timeout: float) -> int:
        """Let open calls end by themselves for up to `timeout` s, then end the rest (their tails and
        summaries still go out, bounded by final_results_timeout_s), then cancel what is still stuck.
        Returns how many calls had to be ended by force."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        stragglers = list(self.calls.values())
        for session in stragglers:
            session.end("shutdown")
        if stragglers:
            log.warning("drain timeout: ending %d calls", len(stragglers))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.ctx.final_results_timeout_s + 1.0):
                    await self._idle.wait()
        for task in list(self._tasks.values()):
            task.cancel()
        for task in list(self._tasks.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return len(stragglers)
