"""Outbox + sender against a real aiohttp receiver that verifies every delivery with standardwebhooks."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import pytest
from aiohttp import web

from daemon.alerts.outbox import Endpoint, Outbox
from daemon.alerts.schedule import RetrySchedule
from daemon.alerts.webhook import WebhookSender
from daemon.clock import SystemClock
from daemon.config import WebhookConfig
from daemon.ops.metrics import Metrics
from tests.e2e.harness import SECRET, WebhookReceiver

FAST = RetrySchedule([0.05, 0.05, 0.05, 0.05], jitter=0.0)


def endpoint(url: str, **kw: object) -> Endpoint:
    return Endpoint.from_config(WebhookConfig(url=url, secret_env="HOOK_SECRET", **kw))  # type: ignore[arg-type]


async def run_sender(outbox: Outbox, eps: list[Endpoint], metrics: Metrics, **kw: object) -> tuple[WebhookSender,
                                                                                                    asyncio.Task[None]]:
    sender = WebhookSender(outbox, eps, metrics=metrics, clock=SystemClock(), schedule=kw.pop("schedule", FAST),
                           secrets=lambda name: SECRET if name == "HOOK_SECRET" else None, **kw)  # type: ignore[arg-type]
    return sender, asyncio.create_task(sender.run())


async def stop(sender: WebhookSender, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await sender.aclose()


async def until(predicate: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 (polls SQLite state, no event to await)
            await asyncio.sleep(0.02)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_delivered_signed_exact_bytes_and_filters(tmp_path: Path) -> None:
    hook, other = WebhookReceiver(), WebhookReceiver()
    await hook.start()
    await other.start()
    outbox, metrics = Outbox(tmp_path / "o.db", SystemClock()), Metrics()
    eps = [endpoint(hook.url), endpoint(other.url, events=["call.summary"])]
    sender, task = await run_sender(outbox, eps, metrics)
    try:
        a = outbox.add("call.spoof_detected", {"leg": "inbound"}, endpoints=eps, occurred_at=1.7e9, decided_at=None)
        b = outbox.add("call.summary", {"x": "ü"}, endpoints=eps, occurred_at=1.7e9)
        sender.wake()
        await hook.wait_for(lambda: len(hook.unique()) == 2, 10)
        await other.wait_for(lambda: len(other.unique()) == 1, 10)
        await until(lambda: outbox.counts()["delivered"] == 3)
        # the gauges follow the outbox within the sender's refresh period
        await until(lambda: sample(metrics, "spoofwatch_outbox_pending") == 0)
    finally:
        await stop(sender, task)
        await hook.stop()
        await other.stop()
    assert set(hook.unique()) == {a, b} and set(other.unique()) == {b}  # filter: summaries only
    got = hook.unique()[a]
    assert got.body == {"type": "call.spoof_detected", "timestamp": got.body["timestamp"], "data": {"leg": "inbound"}}
    assert got.headers["Content-Type"] == "application/json" and got.headers["User-Agent"].startswith("spoofwatch/")
    assert hook.rejected == 0
    assert outbox.counts()["delivered"] == 3 and sample(metrics, "spoofwatch_outbox_pending") == 0
    assert sample(metrics, "spoofwatch_webhook_attempts_total", outcome="delivered") == 3


async def test_receiver_down_then_up_same_webhook_id(tmp_path: Path) -> None:
    hook = WebhookReceiver(status=503)
    await hook.start()
    outbox, metrics = Outbox(tmp_path / "o.db", SystemClock()), Metrics()
    eps = [endpoint(hook.url)]
    sender, task = await run_sender(outbox, eps, metrics, schedule=RetrySchedule([0.1] * 20, jitter=0.0),
                                    max_attempts=50)
    try:
        event = outbox.add("call.summary", {}, endpoints=eps, occurred_at=1.7e9)
        sender.wake()
        await hook.wait_for(lambda: len(hook.failed_ids) >= 2, 10)
        hook.status = 200
        await hook.wait_for(lambda: event in hook.unique(), 10)
    finally:
        await stop(sender, task)
        await hook.stop()
    assert set(hook.failed_ids) == {event}  # every retry carried the same webhook-id
    assert sample(metrics, "spoofwatch_webhook_attempts_total", outcome="http_error") >= 2


async def test_gone_disables_endpoint(tmp_path: Path) -> None:
    hook = WebhookReceiver(status=410)
    await hook.start()
    outbox, metrics = Outbox(tmp_path / "o.db", SystemClock()), Metrics()
    eps = [endpoint(hook.url)]
    sender, task = await run_sender(outbox, eps, metrics)
    try:
        outbox.add("call.summary", {}, endpoints=eps, occurred_at=1.7e9)
        sender.wake()
        await hook.wait_for(lambda: hook.attempts >= 1, 10)
        for _ in range(50):
            if outbox.counts()["disabled"]:
                break
            await asyncio.sleep(0.05)
        outbox.add("call.summary", {}, endpoints=eps, occurred_at=1.7e9)
        sender.wake()
        await asyncio.sleep(0.5)
    finally:
        await stop(sender, task)
        await hook.stop()
    assert hook.attempts == 1  # nothing more is sent to a disabled endpoint
    assert eps[0].key in outbox.disabled_endpoints()
    assert sample(metrics, "spoofwatch_webhook_endpoint_disabled", endpoint=eps[0].key) == 1
    assert outbox.counts()["disabled"] == 1 and outbox.counts()["pending"] == 1


async def test_retry_after_and_redirect_are_failures(tmp_path: Path) -> None:
    hook = WebhookReceiver(status=429, extra_headers={"Retry-After": "3600"})
    await hook.start()
    redirect_app = web.Application()
    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": hook.url})

    redirect_app.router.add_post("/r", redirect)
    runner = web.AppRunner(redirect_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    redirect_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/r"  # type: ignore[union-attr]
    outbox, metrics = Outbox(tmp_path / "o.db", SystemClock()), Metrics()
    eps = [endpoint(hook.url), endpoint(redirect_url)]
    sender, task = await run_sender(outbox, eps, metrics)
    try:
        outbox.add("call.summary", {}, endpoints=eps, occurred_at=1.7e9)
        sender.wake()
        await until(lambda: len([r for r in outbox.list_deliveries("pending") if r["last_status"]]) == 2)
    finally:
        await stop(sender, task)
        await hook.stop()
        await runner.cleanup()
    rows = {r["url"]: r for r in outbox.list_deliveries("pending")}
    import time

    assert rows[hook.url]["next_attempt_at"] - time.time() > 3000  # waits at least Retry-After
    assert hook.attempts == 1 and hook.deliveries == []  # the redirect was not followed
    assert rows[redirect_url]["last_status"] == 302


async def test_exhausted_goes_dead_then_replay_delivers(tmp_path: Path) -> None:
    hook = WebhookReceiver(status=500)
    await hook.start()
    outbox, metrics = Outbox(tmp_path / "o.db", SystemClock()), Metrics()
    eps = [endpoint(hook.url)]
    sender, task = await run_sender(outbox, eps, metrics, max_attempts=3)
    try:
        event = outbox.add("call.summary", {}, endpoints=eps, occurred_at=1.7e9)
        sender.wake()
        for _ in range(100):
            if outbox.counts()["dead"]:
                break
            await asyncio.sleep(0.05)
        assert outbox.counts()["dead"] == 1
        await until(lambda: sample(metrics, "spoofwatch_outbox_dead_letters") == 1)
        assert hook.attempts == 3
        hook.status = 200
        assert outbox.replay(event) == 1
        sender.wake()
        await hook.wait_for(lambda: event in hook.unique(), 10)
        await until(lambda: outbox.counts()["delivered"] == 1)
    finally:
        await stop(sender, task)
        await hook.stop()


async def test_outbox_survives_reopen_and_missing_secret_keeps_events(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    eps = [endpoint("http://127.0.0.1:9/never")]
    first = Outbox(path, SystemClock())
    event = first.add("call.summary", {"n": 1}, endpoints=eps, occurred_at=1.7e9)
    first.close()  # as if the process died right after the commit
    again = Outbox(path, SystemClock())
    assert [r["event_id"] for r in again.list_deliveries("pending")] == [event]
    sender = WebhookSender(again, [dataclasses.replace(eps[0], secret_env="UNSET_SECRET_ENV")], metrics=Metrics(),
                           clock=SystemClock(), secrets=lambda _: None)
    assert sender._active_keys() == []  # no secret: nothing sent, nothing lost
    await sender.aclose()
    assert again.counts()["pending"] == 1


@pytest.mark.parametrize("events", [[], ["call.summary"]])
def test_endpoint_filter(events: list[str]) -> None:
    ep = endpoint("https://x/y", events=events)
    assert ep.accepts("call.summary") and ep.accepts("call.spoof_detected") == (events == [])


async def test_emit_commits_off_the_loop_then_delivers(tmp_path: Path) -> None:
    hook = WebhookReceiver()
    await hook.start()
    outbox, metrics = Outbox(tmp_path / "o.db", SystemClock()), Metrics()
    eps = [endpoint(hook.url)]
    sender, task = await run_sender(outbox, eps, metrics)
    committed: list[tuple[str | None, BaseException | None]] = []
    try:
        data = {"leg": "inbound", "metadata": {"agent": "7"}}
        sender.emit("call.spoof_detected", data, endpoints=eps, occurred_at=1.7e9, decided_at=None,
                    on_committed=lambda eid, exc: committed.append((eid, exc)))
        data["metadata"]["agent"] = "changed after emit"  # the body was taken at emit time
        await until(lambda: committed)
        event_id, exc = committed[0]
        assert exc is None and event_id is not None and event_id.startswith("msg_")
        await hook.wait_for(lambda: event_id in hook.unique(), 10)
    finally:
        await stop(sender, task)
        await hook.stop()
    assert hook.unique()[event_id].body["data"] == {"leg": "inbound", "metadata": {"agent": "7"}}


async def test_emit_holds_an_event_the_outbox_cannot_commit(tmp_path: Path) -> None:
    """A failed commit is not a lost event: it is held (gauge up) and retried; only an exit with the
    disk still refusing loses it, reported to its callback and counted as a drop."""
    outbox, metrics = Outbox(tmp_path / "o.db", SystemClock()), Metrics()
    eps = [endpoint("http://127.0.0.1:9/never")]
    sender = WebhookSender(outbox, eps, metrics=metrics, clock=SystemClock(), secrets=lambda _: None)
    outbox.close()  # e.g. the disk went away: the commit fails on the outbox thread
    committed: list[tuple[str | None, BaseException | None]] = []
    event_id = sender.emit("call.summary", {}, endpoints=eps, occurred_at=1.7e9, decided_at=None,
                           on_committed=lambda eid, exc: committed.append((eid, exc)))
    await until(lambda: sample(metrics, "spoofwatch_outbox_held_events") == 1)
    assert committed == [] and sender.committer.held == 1
    assert sample(metrics, "spoofwatch_outbox_write_errors_total", operation="commit") >= 1
    await sender.aclose()
    assert committed[0][0] is None and isinstance(committed[0][1], Exception) and event_id.startswith("msg_")
    assert sample(metrics, "spoofwatch_drops_total", ingest="outbox", reason="not_committed_at_exit") == 1
    assert sample(metrics, "spoofwatch_outbox_held_events") == 0
    # after the outbox thread stopped, an event is reported lost at once (never silently kept)
    sender.emit("call.summary", {}, endpoints=eps, occurred_at=1.7e9, decided_at=None,
                on_committed=lambda eid, exc: committed.append((eid, exc)))
    assert len(committed) == 2 and committed[1][0] is None
    assert sample(metrics, "spoofwatch_drops_total", ingest="outbox", reason="not_committed_at_exit") == 2


async def test_an_event_is_due_from_when_it_occurred(tmp_path: Path) -> None:
    """A flush that asks for what is due right after an emit finds the event, even though the commit
    ran later on the outbox thread."""
    outbox = Outbox(tmp_path / "o.db", SystemClock())
    eps = [endpoint("http://127.0.0.1:9/never")]
    occurred = time.time()
    outbox.add("call.summary", {}, endpoints=eps, occurred_at=occurred)
    assert [d.event_type for d in outbox.due(occurred, 10, [eps[0].key])] == ["call.summary"]
    outbox.close()
