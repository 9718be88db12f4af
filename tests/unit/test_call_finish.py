"""CallSession.finish(): every leg's final results are awaited at once (one overall bound), and the call
summary always goes out, also when the registry cancels the call at shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from daemon.calls.registry import CallRegistry
from daemon.calls.session import CallContext, CallSession
from daemon.clock import SystemClock
from daemon.config import PolicyConfig
from daemon.model import PCMU_8K, CallInfo, LegRef
from daemon.ops.metrics import Metrics

WAIT = 10.0


class FakeStream:
    """An upstream leg whose final results arrive when the test says so (`release`), or never."""

    def __init__(self, leg: LegRef) -> None:
        self.leg = leg
        self.finishing = asyncio.Event()  # finish() entered
        self.release = asyncio.Event()
        self.closed = False
        self.finish_timeouts: list[float] = []

    def start(self) -> None:
        pass

    def send_chunk(self, chunk: bytes, received_at: float) -> None:
        pass

    async def finish(self, timeout: float) -> None:
        self.finish_timeouts.append(timeout)
        self.finishing.set()
        await self.release.wait()

    async def aclose(self) -> None:
        self.closed = True

    @property
    def pid(self) -> int | None:
        return None

    @property
    def simulated(self) -> bool:
        return True

    @property
    def analysed(self) -> bool:
        return True


class Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event_type: str, data: dict[str, Any], *, decided_at: float | None) -> None:
        self.events.append((event_type, data))

    def summaries(self) -> list[dict[str, Any]]:
        return [d for t, d in self.events if t == "call.summary"]


def make(final_timeout_s: float) -> tuple[CallContext, Sink, dict[str, FakeStream]]:
    sink = Sink()
    streams: dict[str, FakeStream] = {}

    def factory(leg: LegRef, on_result: Any) -> FakeStream:
        streams[leg.leg] = FakeStream(leg)
        return streams[leg.leg]

    ctx = CallContext(metrics=Metrics(), clock=SystemClock(), streams=factory, alerts=sink, policy=PolicyConfig(),
                      detector_host="test", upstream_target="sim", final_results_timeout_s=final_timeout_s)
    return ctx, sink, streams


def legs_active(ctx: CallContext) -> float:
    return ctx.metrics.registry.get_sample_value("spoofwatch_legs_active", {"ingest": "twilio"}) or 0.0


async def test_legs_are_awaited_at_once_and_all_arrive() -> None:
    ctx, sink, streams = make(final_timeout_s=WAIT)
    session = CallSession(CallInfo("CA1", "twilio", {}), ctx)
    session.open_leg("inbound", PCMU_8K)
    session.open_leg("outbound", PCMU_8K)
    session.end("stop")
    task = asyncio.create_task(session.finish())
    async with asyncio.timeout(WAIT):
        # both legs wait for their results at the same time: one after the other, the second would not
        # be entered while the first still waits
        await streams["inbound"].finishing.wait()
        await streams["outbound"].finishing.wait()
    streams["inbound"].release.set()
    streams["outbound"].release.set()
    async with asyncio.timeout(WAIT):
        outcome = await task
    assert outcome == "clean"
    (summary,) = sink.summaries()
    assert {n: leg["final_results_received"] for n, leg in summary["legs"].items()} == {"inbound": True,
                                                                                         "outbound": True}
    assert all(s.closed for s in streams.values()) and legs_active(ctx) == 0
    # each stream is given more than the session's own bound, so the session's bound decides
    assert all(s.finish_timeouts[0] > WAIT for s in streams.values())


async def test_one_overall_bound_marks_the_leg_whose_results_did_not_arrive() -> None:
    ctx, sink, streams = make(final_timeout_s=0.3)
    session = CallSession(CallInfo("CA2", "twilio", {}), ctx)
    session.open_leg("inbound", PCMU_8K)
    session.open_leg("outbound", PCMU_8K)
    streams["inbound"].release.set()  # the caller's stream ends at once; the agent's never does
    session.end("stop")
    async with asyncio.timeout(WAIT):
        await session.finish()
    (summary,) = sink.summaries()
    assert summary["legs"]["inbound"]["final_results_received"] is True
    assert summary["legs"]["outbound"]["final_results_received"] is False
    assert streams["outbound"].closed and legs_active(ctx) == 0


@pytest.mark.parametrize("ended", [True, False])
async def test_summary_goes_out_when_the_finish_is_cancelled(ended: bool) -> None:
    ctx, sink, streams = make(final_timeout_s=WAIT)
    session = CallSession(CallInfo("CA3", "twilio", {"tenant": "acme"}), ctx)
    session.open_leg("inbound", PCMU_8K)
    session.open_leg("outbound", PCMU_8K)
    if ended:
        session.end("shutdown")
    task = asyncio.create_task(session.finish())
    if ended:
        async with asyncio.timeout(WAIT):
            await streams["inbound"].finishing.wait()
            await streams["outbound"].finishing.wait()
    else:
        await asyncio.sleep(0)  # let the task start waiting for the call's end
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await task
    (summary,) = sink.summaries()
    assert summary["end_reason"] == "shutdown" and summary["metadata"]["tenant"] == "acme"
    assert [leg["final_results_received"] for leg in summary["legs"].values()] == [False, False]
    assert all(s.closed for s in streams.values()) and legs_active(ctx) == 0


async def test_registry_drain_cut_still_sends_every_summary() -> None:
    """Two calls of two legs whose upstream never answers, cut by the drain: each summary goes out once."""
    ctx, sink, _ = make(final_timeout_s=0.2)
    registry = CallRegistry(ctx, max_calls=10)
    for call_id in ("CAa", "CAb"):
        call = registry.admit(CallInfo(call_id, "twilio", {}))
        call.open_leg("inbound", PCMU_8K)
        call.open_leg("outbound", PCMU_8K)
    registry.stop_accepting()
    async with asyncio.timeout(WAIT):
        forced = await registry.drain(0.05)
    assert forced == 2
    assert sorted(s["call_id"] for s in sink.summaries()) == ["CAa", "CAb"]
    assert all(not leg["final_results_received"] for s in sink.summaries() for leg in s["legs"].values())
    assert registry.calls == {}
