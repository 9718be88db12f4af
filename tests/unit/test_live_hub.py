"""The live page's hub (daemon.ops.live), sans-I/O: values in, state and SSE frames out, fake clock."""

from __future__ import annotations

import json
from typing import Any

from daemon.clock import FakeClock
from daemon.model import CallInfo, DeepfakeResult, LegRef, Level
from daemon.ops.live import LiveHub, Subscriber
from daemon.policy.verdict import AlertDecision


def parse(frames: list[str]) -> list[tuple[int, str, Any]]:
    out = []
    for frame in frames:
        assert frame.endswith("\n\n")
        fields = dict(line.split(": ", 1) for line in frame.strip("\n").split("\n"))
        out.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
    return out


def result(call: str, leg: str, start: float, posterior: float, *, level: Level = Level.SEGMENT) -> DeepfakeResult:
    return DeepfakeResult(LegRef(call, leg), level, start, start + 2.0, "spoofed" if posterior >= 0.5 else "bonafide",
                          posterior, pid=7, message_id=1, simulated=True)


def decision(call: str, leg: str) -> AlertDecision:
    return AlertDecision(LegRef(call, leg), 0.99, 0.9, Level.SEGMENT, 2.0, 4.0, 2, "consecutive_segments", False, 7,
                         True, 0.0)


def new_hub(**kw: Any) -> tuple[LiveHub, FakeClock, list[str]]:
    clock = FakeClock()
    overflows: list[str] = []
    hub = LiveHub(clock, on_overflow=lambda: overflows.append("x"), **kw)
    return hub, clock, overflows


def subscribe(hub: LiveHub) -> tuple[Subscriber, list[int]]:
    wakes: list[int] = []
    return hub.subscribe(lambda: wakes.append(1)), wakes


def test_call_lifecycle_verdicts_and_points() -> None:
    hub, _, _ = new_hub(max_points_per_leg=3)
    hub.call_started(CallInfo("c1", "twilio", {"tenant": "acme"}))
    hub.leg_opened("c1", "inbound", "pcmu", 8000)
    hub.leg_opened("c1", "outbound", "pcmu", 8000)
    hub.result(result("c1", "outbound", 0.0, 0.01))
    hub.result(result("c1", "inbound", 0.0, 0.999))
    state = hub.snapshot()
    (call,) = state["calls"]
    legs = {leg["leg"]: leg for leg in call["legs"]}
    assert legs["outbound"]["verdict"] == "bonafide" and legs["inbound"]["verdict"] == "suspect"
    assert call["verdict"] == "suspect" and call["metadata"] == {"tenant": "acme"}
    hub.alert_decided(decision("c1", "inbound"))
    hub.result(result("c1", "inbound", 2.0, 0.2))  # later bonafide evidence never undoes an alert
    for i in range(5):
        hub.result(result("c1", "outbound", 2.0 + 2 * i, 0.01, level=Level.UTTERANCE))
    call = hub.snapshot()["calls"][0]
    legs = {leg["leg"]: leg for leg in call["legs"]}
    assert legs["inbound"]["verdict"] == "spoofed" and legs["inbound"]["alerted"] is True
    assert call["verdict"] == "spoofed" and call["alerts"] == 1
    assert legs["inbound"]["max_posterior"] == 0.999 and legs["inbound"]["last_posterior"] == 0.2
    assert len(legs["outbound"]["points"]) == 3  # bounded: the newest kept
    assert legs["outbound"]["points"][-1] == ["u", 10.0, 12.0, 0.01, "bonafide"]
    assert legs["outbound"]["results"] == 6
    hub.call_ended("c1", "stop")
    assert hub.snapshot()["calls"][0]["state"] == "ended"
    hub.call_finished("c1", "alerted", analysed={"inbound": True, "outbound": False})
    call = hub.snapshot()["calls"][0]
    assert call["state"] == "finished" and call["outcome"] == "alerted"
    assert [leg["analysed"] for leg in call["legs"]] == [True, False]
    assert all(leg["closed"] for leg in call["legs"])


def test_subscriber_gets_state_first_then_events_in_order() -> None:
    hub, _, _ = new_hub()
    hub.call_started(CallInfo("c1", "rtp"))
    sub, wakes = subscribe(hub)
    assert sub.pending
    ((seq, name, state),) = parse(sub.take())
    assert name == "state" and seq == hub.seq and [c["call_id"] for c in state["calls"]] == ["c1"]
    assert sub.take() == [] and not sub.pending
    hub.leg_opened("c1", "caller", "pcma", 8000)
    hub.result(result("c1", "caller", 0.0, 0.999))
    hub.upstream_state(target="x:1", simulated=False, up=False, detail="3 consecutive stream failures")
    events = parse(sub.take())
    assert [e[1] for e in events] == ["call", "result", "call", "upstream"]
    assert [e[0] for e in events] == list(range(seq + 1, seq + 5))
    assert events[1][2]["point"] == ["s", 0.0, 2.0, 0.999, "spoofed"] and events[1][2]["call_verdict"] == "suspect"
    assert events[3][2]["up"] is False
    assert len(wakes) == 4
    hub.unsubscribe(sub)
    hub.call_ended("c1", "bye")
    assert sub.take() == [] and hub.subscribers == 0


def test_slow_subscriber_overflows_into_one_resync_and_others_are_unaffected() -> None:
    hub, _, overflows = new_hub(queue_frames=3)
    slow, _ = subscribe(hub)
    fast, _ = subscribe(hub)
    slow.take()
    fast.take()
    hub.call_started(CallInfo("c1", "twilio"))
    got_fast = parse(fast.take())
    hub.leg_opened("c1", "inbound", "pcmu", 8000)
    got_fast += parse(fast.take())
    for i in range(10):
        hub.result(result("c1", "inbound", 2.0 * i, 0.01))
        got_fast += parse(fast.take())
    # the reader that keeps up sees every event (the first result also changes the call's verdict)
    assert [e[1] for e in got_fast] == ["call", "call", "result", "call"] + ["result"] * 9
    assert fast.overflows == 0
    assert slow.overflows == 1 and overflows == ["x"]
    ((_, name, state),) = parse(slow.take())  # the queue was dropped for one full state
    assert name == "state"
    assert state["calls"][0]["legs"][0]["results"] == 10 and len(state["calls"][0]["legs"][0]["points"]) == 10
    hub.call_ended("c1", "bye")
    assert [e[1] for e in parse(slow.take())] == ["call"]


def test_ended_calls_are_kept_a_while_then_removed() -> None:
    hub, clock, _ = new_hub(ended_keep_s=60.0, max_ended_calls=2)
    sub, _ = subscribe(hub)
    sub.take()
    for i in range(4):
        hub.call_started(CallInfo(f"c{i}", "twilio"))
    hub.call_finished("c0", "clean")
    clock.advance(30)
    hub.call_finished("c1", "clean")
    hub.call_finished("c2", "clean")  # a third ended call: the oldest goes at once
    assert [c["call_id"] for c in hub.snapshot()["calls"]] == ["c1", "c2", "c3"]
    clock.advance(59.5)
    assert [c["call_id"] for c in hub.snapshot()["calls"]] == ["c1", "c2", "c3"]
    clock.advance(0.5)
    assert [c["call_id"] for c in hub.snapshot()["calls"]] == ["c3"]
    removed = [e[2]["call_id"] for e in parse(sub.take()) if e[1] == "call_removed"]
    assert removed == ["c0", "c1", "c2"]


def test_calls_beyond_the_bound_are_counted_not_shown() -> None:
    hub, _, _ = new_hub(max_calls=2)
    for i in range(4):
        hub.call_started(CallInfo(f"c{i}", "twilio"))
        hub.leg_opened(f"c{i}", "inbound", "pcmu", 8000)
        hub.result(result(f"c{i}", "inbound", 0.0, 0.5))
    state = hub.snapshot()
    assert [c["call_id"] for c in state["calls"]] == ["c0", "c1"] and state["hidden_calls"] == 2
    hub.call_finished("c0", "clean")
    hub.call_started(CallInfo("c9", "twilio"))  # a finished call frees a place
    assert "c9" in [c["call_id"] for c in hub.snapshot()["calls"]]


def test_alert_ring_and_delivery_states() -> None:
    hub, _, _ = new_hub(max_alerts=3)
    eps = [("k1", "http://a/hook"), ("k2", "http://b/hook")]
    for i in range(5):
        hub.alert_committed(f"msg_{i}", "call.spoof_detected",
                            {"call_id": "c1", "leg": "inbound", "posterior": 0.99, "simulated": True,
                             "reason": "utterance"}, eps)
    alerts = hub.snapshot()["alerts"]
    assert [a["event_id"] for a in alerts] == ["msg_4", "msg_3", "msg_2"]  # newest first, bounded
    assert [d["state"] for d in alerts[0]["deliveries"]] == ["pending", "pending"]
    hub.delivery("msg_4", "k1", "delivered", 1, "")
    hub.delivery("msg_4", "k2", "failing", 2, "HTTP 503")
    hub.delivery("msg_0", "k1", "delivered", 1, "")  # evicted from the ring: ignored
    hub.delivery("msg_3", "k2", "dead", 12, "HTTP 500")
    alerts = {a["event_id"]: a for a in hub.snapshot()["alerts"]}
    d4 = {d["endpoint"]: d for d in alerts["msg_4"]["deliveries"]}
    assert d4["k1"]["state"] == "delivered" and d4["k2"] == {"endpoint": "k2", "url": "http://b/hook",
                                                             "state": "failing", "attempts": 2, "detail": "HTTP 503"}
    assert {d["endpoint"]: d["state"] for d in alerts["msg_3"]["deliveries"]} == {"k1": "pending", "k2": "dead"}
    assert alerts["msg_4"]["posterior"] == 0.99 and alerts["msg_4"]["call_id"] == "c1"
    hub.alert_committed("msg_u", "upstream.degraded", {"detail": "down", "simulated": False}, [])
    up = hub.snapshot()["alerts"][0]
    assert up["type"] == "upstream.degraded" and up["call_id"] is None and up["detail"] == "down"


def test_a_bug_in_a_hook_is_counted_never_raised() -> None:
    hub, _, _ = new_hub()
    hub.call_started(CallInfo("c1", "twilio"))
    hub.leg_opened("c1", "inbound", "pcmu", 8000)
    hub.result("not a result")  # type: ignore[arg-type]
    assert hub.errors == 1
    hub.result(result("c1", "inbound", 0.0, 0.1))
    assert hub.snapshot()["calls"][0]["legs"][0]["results"] == 1
    hub.result(result("unknown", "inbound", 0.0, 0.1))  # unknown calls and legs are ignored quietly
    hub.leg_opened("unknown", "x", "pcmu", 8000)
    assert hub.errors == 1


def test_close_subscribers_ends_every_stream() -> None:
    hub, _, _ = new_hub()
    sub, wakes = subscribe(hub)
    hub.close_subscribers()
    assert sub.closed and wakes and hub.subscribers == 0
