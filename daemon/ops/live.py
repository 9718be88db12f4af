"""The live operator page's event hub (sans-I/O): what the call layer, the webhook sender and the
upstream health tell it in, JSON-able state and server-sent-event frames out.

The call layer feeds it synchronously on the event loop (a plain method call per call start/end,
leg open/close, `DeepfakeResult`, alert decision, outbox commit, delivery outcome and upstream
change); it never awaits and never raises into its caller (a bug here is logged and counted, the
call goes on). Everything it keeps is bounded: at most `max_calls` calls are shown (later ones are
counted as hidden), ended calls stay `ended_keep_s` (at most `max_ended_calls` of them), each leg
keeps its last `max_points_per_leg` results and the alert ring its last `max_alerts` events.

Subscribers (one per browser) get frames in a bounded queue: when a slow browser lets it fill up,
its queue is cleared and its next read is one full `state` frame (a resync), so one slow client
costs a counter, never the daemon's time or memory. Every subscription begins with that `state`
frame, the same document as `/api/state`, so a reconnecting browser is resynced without a race.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from daemon.clock import Clock
from daemon.model import CallInfo, DeepfakeResult, Level
from daemon.policy.verdict import AlertDecision

log = logging.getLogger("spoofwatch.live")
_P = ParamSpec("_P")
_R = TypeVar("_R")

#: leg and call verdicts, from least to most severe (a call shows its most severe leg's)
VERDICTS = ("pending", "bonafide", "suspect", "spoofed")
#: delivery states shown per endpoint; "failing" = a failed attempt with a retry scheduled
DELIVERY_STATES = ("pending", "delivered", "failing", "dead", "disabled")
#: metadata items and characters per value copied from a call (the page shows a few)
_MAX_META = 8
_MAX_META_VALUE = 80


def _guarded(method: Callable[_P, None]) -> Callable[_P, None]:
    """An observer hook never raises into the call path: a bug here is logged and counted."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> None:
        try:
            method(*args, **kwargs)
        except Exception:
            hub = args[0]
            hub.errors += 1  # type: ignore[attr-defined]
            log.exception("live hub: %s failed (the page may be stale until the next resync)", method.__name__)

    return wrapper


def sse_frame(seq: int, name: str, data: str) -> str:
    """One server-sent event. `data` is JSON (no newlines: json.dumps never emits one)."""
    return f"id: {seq}\nevent: {name}\ndata: {data}\n\n"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass
class _Leg:
    name: str
    codec: str
    rate: int
    opened_wall: float
    points: deque[list[Any]]
    verdict: str = "pending"
    results: int = 0
    max_posterior: float = 0.0
    last_posterior: float | None = None
    alerted: bool = False
    closed: bool = False
    analysed: bool = True

    def view(self, *, with_points: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "leg": self.name, "codec": self.codec, "rate": self.rate, "verdict": self.verdict,
            "results": self.results, "max_posterior": round(self.max_posterior, 4),
            "last_posterior": None if self.last_posterior is None else round(self.last_posterior, 4),
            "alerted": self.alerted, "closed": self.closed, "analysed": self.analysed,
        }
        if with_points:
            out["points"] = list(self.points)
        return out


@dataclass
class _Call:
    call_id: str
    ingest: str
    metadata: dict[str, str]
    started_wall: float
    legs: dict[str, _Leg] = field(default_factory=dict)
    state: str = "active"  # active → ended (audio over, final results awaited) → finished
    end_reason: str = ""
    ended_wall: float | None = None
    outcome: str = ""
    alerts: int = 0

    @property
    def verdict(self) -> str:
        worst = 0
        for leg in self.legs.values():
            worst = max(worst, VERDICTS.index(leg.verdict))
        return VERDICTS[worst]

    def view(self, *, with_points: bool) -> dict[str, Any]:
        return {
            "call_id": self.call_id, "ingest": self.ingest, "metadata": self.metadata,
            "started_at": self.started_wall, "ended_at": self.ended_wall, "state": self.state,
            "end_reason": self.end_reason, "outcome": self.outcome, "verdict": self.verdict,
            "alerts": self.alerts, "legs": [leg.view(with_points=with_points) for leg in self.legs.values()],
        }


@dataclass
class _Alert:
    event_id: str
    event_type: str
    at: float
    call_id: str | None
    leg: str | None
    posterior: float | None
    simulated: bool
    detail: str
    deliveries: dict[str, dict[str, Any]]

    def view(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "type": self.event_type, "at": self.at, "call_id": self.call_id,
                "leg": self.leg, "posterior": self.posterior, "simulated": self.simulated, "detail": self.detail,
                "deliveries": list(self.deliveries.values())}


class Subscriber:
    """One browser's bounded queue of SSE frames. `notify` is called (on the loop) when frames arrive."""

    def __init__(self, hub: LiveHub, max_queue: int, notify: Callable[[], None]) -> None:
        self._hub = hub
        self._max = max_queue
        self._notify = notify
        self._frames: deque[str] = deque()
        self._resync = True  # the first read is the full state
        self.closed = False
        self.overflows = 0

    @property
    def pending(self) -> bool:
        return self._resync or bool(self._frames)

    def offer(self, frame: str) -> None:
        if self.closed or self._resync:
            return  # a resync is due: the state it sends covers this frame
        if len(self._frames) >= self._max:
            self._frames.clear()
            self._resync = True
            self.overflows += 1
            self._hub.overflowed()
        else:
            self._frames.append(frame)
        self._notify()

    def take(self) -> list[str]:
        """Every frame due now, in order (a resync is one `state` frame), and the queue emptied."""
        if self._resync:
            self._resync = False
            self._frames.clear()
            return [self._hub.state_frame()]
        frames = list(self._frames)
        self._frames.clear()
        return frames

    def close(self) -> None:
        self.closed = True
        self._notify()


class LiveHub:
    def __init__(self, clock: Clock, *, max_calls: int = 200, max_ended_calls: int = 30,
                 ended_keep_s: float = 120.0, max_points_per_leg: int = 600, max_alerts: int = 100,
                 queue_frames: int = 512, on_overflow: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.max_calls = max_calls
        self.max_ended_calls = max_ended_calls
        self.ended_keep_s = ended_keep_s
        self.max_points_per_leg = max_points_per_leg
        self.queue_frames = queue_frames
        self._on_overflow = on_overflow
        self.seq = 0
        self.errors = 0
        self.hidden_calls = 0  # calls not shown because max_calls were already shown
        self._calls: dict[str, _Call] = {}
        self._finished: deque[tuple[float, str]] = deque()  # (monotonic finish time, call id), oldest first
        self._alerts: deque[_Alert] = deque(maxlen=max_alerts)
        self._alert_index: dict[str, _Alert] = {}
        self._subs: list[Subscriber] = []
        self.upstream: dict[str, Any] = {"target": "", "simulated": False, "up": True, "detail": "", "since": None}

    # subscribers ----------------------------------------------------------------------------------
    def subscribe(self, notify: Callable[[], None]) -> Subscriber:
        sub = Subscriber(self, self.queue_frames, notify)
        self._subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        sub.closed = True
        if sub in self._subs:
            self._subs.remove(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def close_subscribers(self) -> None:
        """Shutdown: every subscription ends (its SSE response returns)."""
        for sub in list(self._subs):
            sub.close()
        self._subs.clear()

    def overflowed(self) -> None:
        if self._on_overflow is not None:
            self._on_overflow()

    def _publish(self, name: str, payload: dict[str, Any]) -> None:
        self.seq += 1
        if not self._subs:
            return  # nobody watches: nothing is encoded
        frame = sse_frame(self.seq, name, _dumps(payload))
        for sub in list(self._subs):
            sub.offer(frame)

    # state out -------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        self._prune()
        return {
            "seq": self.seq,
            "now": self.clock.wall(),
            "upstream": dict(self.upstream),
            "calls": [c.view(with_points=True) for c in self._calls.values()],
            "hidden_calls": self.hidden_calls,
            "alerts": [a.view() for a in reversed(self._alerts)],  # newest first
        }

    def state_frame(self) -> str:
        return sse_frame(self.seq, "state", _dumps(self.snapshot()))

    # calls in ----------------------------------------------------------------------------------------
    @_guarded
    def call_started(self, info: CallInfo) -> None:
        self._prune()
        if info.call_id in self._calls:
            return
        if sum(1 for c in self._calls.values() if c.state != "finished") >= self.max_calls:
            self.hidden_calls += 1
            return
        meta = {str(k)[:32]: str(v)[:_MAX_META_VALUE] for k, v in list(info.metadata.items())[:_MAX_META]}
        call = _Call(info.call_id, info.ingest, meta, self.clock.wall())
        self._calls[info.call_id] = call
        self._publish_call(call)

    @_guarded
    def leg_opened(self, call_id: str, leg: str, codec: str, rate: int) -> None:
        call = self._calls.get(call_id)
        if call is None or leg in call.legs:
            return
        call.legs[leg] = _Leg(leg, codec, rate, self.clock.wall(), deque(maxlen=self.max_points_per_leg))
        self._publish_call(call)

    @_guarded
    def result(self, r: DeepfakeResult) -> None:
        call = self._calls.get(r.leg.call_id)
        leg = call.legs.get(r.leg.leg) if call is not None else None
        if call is None or leg is None:
            return
        point = ["s" if r.level is Level.SEGMENT else "u", round(r.start_s, 3), round(r.end_s, 3),
                 round(r.spoofed_posterior, 4), r.label]
        leg.points.append(point)
        leg.results += 1
        leg.max_posterior = max(leg.max_posterior, r.spoofed_posterior)
        leg.last_posterior = r.spoofed_posterior
        before = call.verdict
        if not leg.alerted:
            leg.verdict = "suspect" if r.label == "spoofed" else "bonafide"
        self._publish("result", {"call_id": call.call_id, "leg": leg.name, "point": point, "verdict": leg.verdict,
                                 "results": leg.results, "max_posterior": round(leg.max_posterior, 4),
                                 "last_posterior": round(r.spoofed_posterior, 4), "call_verdict": call.verdict})
        if call.verdict != before:
            self._publish_call(call)

    @_guarded
    def alert_decided(self, decision: AlertDecision) -> None:
        call = self._calls.get(decision.leg.call_id)
        leg = call.legs.get(decision.leg.leg) if call is not None else None
        if call is None or leg is None:
            return
        leg.alerted = True
        leg.verdict = "spoofed"
        call.alerts += 1
        self._publish_call(call)

    @_guarded
    def leg_closed(self, call_id: str, leg: str) -> None:
        """No more audio on the leg (its last results may still come)."""
        call = self._calls.get(call_id)
        if call is None or leg not in call.legs or call.legs[leg].closed:
            return
        call.legs[leg].closed = True
        self._publish_call(call)

    @_guarded
    def call_ended(self, call_id: str, reason: str) -> None:
        call = self._calls.get(call_id)
        if call is None or call.state != "active":
            return
        call.state = "ended"
        call.end_reason = reason
        call.ended_wall = self.clock.wall()
        self._publish_call(call)

    @_guarded
    def call_finished(self, call_id: str, outcome: str, *, analysed: Mapping[str, bool] | None = None) -> None:
        """The summary is out (`outcome`: alerted, clean, unanalysed, ...); `analysed` per leg: whether
        upstream analysed it at all."""
        call = self._calls.get(call_id)
        if call is None or call.state == "finished":
            return
        call.state = "finished"
        call.outcome = outcome
        if call.ended_wall is None:
            call.ended_wall = self.clock.wall()
        for name, leg in call.legs.items():
            leg.closed = True
            leg.analysed = (analysed or {}).get(name, leg.analysed)
        self._finished.append((self.clock.monotonic(), call_id))
        self._publish_call(call)
        self._prune()

    def _publish_call(self, call: _Call) -> None:
        self._publish("call", call.view(with_points=False))

    def _prune(self) -> None:
        now = self.clock.monotonic()
        while self._finished and (now - self._finished[0][0] >= self.ended_keep_s
                                  or len(self._finished) > self.max_ended_calls):
            _, call_id = self._finished.popleft()
            if self._calls.pop(call_id, None) is not None:
                self._publish("call_removed", {"call_id": call_id})

    # alerts in ---------------------------------------------------------------------------------------
    @_guarded
    def alert_committed(self, event_id: str, event_type: str, data: dict[str, Any],
                        endpoints: Sequence[tuple[str, str]]) -> None:
        """An event is durable in the outbox; `endpoints` are the (key, url) it is to be delivered to."""
        posterior = data.get("posterior")
        detail = str(data.get("reason") or data.get("detail") or data.get("end_reason") or "")
        alert = _Alert(event_id, event_type, self.clock.wall(), _str_or_none(data.get("call_id")),
                       _str_or_none(data.get("leg")), float(posterior) if isinstance(posterior, int | float) else None,
                       bool(data.get("simulated", False)), detail[:200],
                       {key: {"endpoint": key, "url": url, "state": "pending", "attempts": 0, "detail": ""}
                        for key, url in endpoints})
        if len(self._alerts) == self._alerts.maxlen:
            self._alert_index.pop(self._alerts[0].event_id, None)
        self._alerts.append(alert)
        self._alert_index[event_id] = alert
        self._publish("alert", alert.view())

    @_guarded
    def delivery(self, event_id: str, endpoint: str, state: str, attempts: int, detail: str) -> None:
        """A delivery attempt's outcome: `state` is one of DELIVERY_STATES."""
        alert = self._alert_index.get(event_id)
        if alert is None:
            return  # older than the ring (or from before this start)
        row = alert.deliveries.setdefault(endpoint, {"endpoint": endpoint, "url": "", "state": "pending",
                                                     "attempts": 0, "detail": ""})
        row.update(state=state if state in DELIVERY_STATES else "failing", attempts=attempts, detail=detail[:200])
        self._publish("alert", alert.view())

    # upstream in -------------------------------------------------------------------------------------
    @_guarded
    def upstream_state(self, *, target: str, simulated: bool, up: bool, detail: str) -> None:
        self.upstream = {"target": target, "simulated": simulated, "up": up, "detail": detail,
                         "since": self.clock.wall()}
        self._publish("upstream", dict(self.upstream))


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
