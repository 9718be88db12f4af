"""Outbox faults against the real sender: the outbox file locked by ANOTHER process (sqlite3 holding
`BEGIN EXCLUSIVE`), a real aiohttp receiver verifying every delivery with standardwebhooks."""

from __future__ import annotations

from pathlib import Path

from daemon.alerts.outbox import Outbox
from daemon.alerts.webhook import WebhookSender
from daemon.clock import SystemClock
from daemon.ops.metrics import Metrics
from daemon.ops.supervise import Backoff, Supervisor
from tests.e2e.harness import SECRET, WebhookReceiver
from tests.e2e.sqlite_lock import SqliteLock
from tests.integration.test_webhook_delivery import FAST, endpoint, sample, until

#: a write waits this long for the other process's lock, then fails (the daemon default is 10 s)
BUSY_S = 0.1


def make_sender(outbox: Outbox, url: str, metrics: Metrics) -> WebhookSender:
    return WebhookSender(outbox, [endpoint(url)], metrics=metrics, clock=SystemClock(), schedule=FAST,
                         secrets=lambda name: SECRET if name == "HOOK_SECRET" else None,
                         write_backoff=Backoff(0.2, 1.0, jitter=0.0))


async def test_a_delivery_the_outbox_cannot_record_is_not_resent(tmp_path: Path) -> None:
    """The POST succeeds but marking it delivered fails (the file is locked): the outcome is recorded
    again with backoff; the same POST does not go out again every 50 ms."""
    hook = WebhookReceiver()
    await hook.start()
    db = tmp_path / "o.db"
    outbox, metrics = Outbox(db, SystemClock(), busy_timeout_s=BUSY_S), Metrics()
    sender = make_sender(outbox, hook.url, metrics)
    eps = [endpoint(hook.url)]
    outbox.register_endpoints(eps)
    event = outbox.add("call.summary", {"n": 1}, endpoints=eps, occurred_at=1.7e9)
    supervisor = Supervisor(clock=SystemClock(), metrics=metrics)
    lock = SqliteLock(db)
    try:
        await lock.hold()
        supervisor.spawn("webhook-sender", sender.run)
        await hook.wait_for(lambda: event in hook.unique(), 10)
        # several record attempts fail while the lock is held (backoff 0.2, 0.4, 0.8 s ...)
        await until(lambda: sample(metrics, "spoofwatch_outbox_write_errors_total", operation="mark") >= 3, 20)
        assert hook.attempts == 1  # still the one POST: no resend loop
        assert outbox.counts()["pending"] == 1  # (reads go on while the other process writes)
        await lock.release()
        await until(lambda: outbox.counts()["delivered"] == 1, 10)
        await until(lambda: sample(metrics, "spoofwatch_outbox_pending") == 0, 10)
    finally:
        await lock.release()
        await supervisor.aclose()
        await sender.aclose()
        await hook.stop()
    assert hook.attempts == 1 and hook.rejected == 0
    assert supervisor.tasks["webhook-sender"].restarts == 0  # the sender lived through it
    outbox.close()


async def test_events_emitted_while_locked_are_held_then_delivered_in_order_with_their_ids(tmp_path: Path) -> None:
    hook = WebhookReceiver()
    await hook.start()
    db = tmp_path / "o.db"
    outbox, metrics = Outbox(db, SystemClock(), busy_timeout_s=BUSY_S), Metrics()
    sender = make_sender(outbox, hook.url, metrics)
    eps = [endpoint(hook.url)]
    supervisor = Supervisor(clock=SystemClock(), metrics=metrics)
    committed: list[str | None] = []
    lock = SqliteLock(db)
    try:
        supervisor.spawn("webhook-sender", sender.run)
        supervisor.spawn("outbox-commit-retry", sender.committer.run)
        await lock.hold()
        ids = [sender.emit("call.summary", {"n": n}, endpoints=eps, occurred_at=1.7e9 + n, decided_at=None,
                           on_committed=lambda eid, exc: committed.append(eid)) for n in range(5)]
        await until(lambda: sample(metrics, "spoofwatch_outbox_held_events") == 5, 10)
        # held, not lost: retried with backoff while the lock stays
        await until(lambda: sample(metrics, "spoofwatch_outbox_write_errors_total", operation="commit") >= 3, 20)
        assert committed == [] and hook.attempts == 0 and sender.committer.held == 5
        later = sender.emit("call.summary", {"n": 5}, endpoints=eps, occurred_at=1.7e9 + 5, decided_at=None,
                            on_committed=lambda eid, exc: committed.append(eid))
        await lock.release()
        await hook.wait_for(lambda: len(hook.unique()) == 6, 20)
        await until(lambda: sample(metrics, "spoofwatch_outbox_held_events") == 0, 10)
        await until(lambda: outbox.counts()["delivered"] == 6, 10)
    finally:
        await lock.release()
        await supervisor.aclose()
        await sender.aclose()
        await hook.stop()
    assert committed == [*ids, later]  # committed in emit order, each once, with the id it was given
    assert set(hook.unique()) == {*ids, later} and hook.rejected == 0  # the same ids reached the receiver
    assert [hook.unique()[i].body["data"]["n"] for i in ids] == [0, 1, 2, 3, 4]
    assert sample(metrics, "spoofwatch_drops_total", ingest="outbox", reason="held_full") == 0
    assert all(s.restarts == 0 for s in supervisor.tasks.values())
    outbox.close()


async def test_a_full_hold_drops_loudly(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    outbox, metrics = Outbox(db, SystemClock(), busy_timeout_s=BUSY_S), Metrics()
    eps = [endpoint("http://127.0.0.1:9/never")]
    sender = WebhookSender(outbox, eps, metrics=metrics, clock=SystemClock(), secrets=lambda _: None,
                           held_capacity=2)
    results: list[tuple[str | None, BaseException | None]] = []
    async with SqliteLock(db):
        for n in range(3):
            sender.emit("call.summary", {"n": n}, endpoints=eps, occurred_at=1.7e9, decided_at=None,
                        on_committed=lambda eid, exc: results.append((eid, exc)))
        await until(lambda: sample(metrics, "spoofwatch_drops_total", ingest="outbox", reason="held_full") == 1, 10)
        assert sender.committer.held == 2 and len(results) == 1 and results[0][0] is None
    await sender.aclose()  # the lock is gone: the two held events commit on the way out
    assert outbox.counts()["pending"] == 2 and sample(metrics, "spoofwatch_outbox_held_events") == 0
    outbox.close()


async def test_a_crashing_sender_is_restarted_and_delivers(tmp_path: Path) -> None:
    """A fault that ends `run()` (injected: the outbox read of due deliveries raises ENOSPC three times):
    the supervisor logs, counts and restarts it with backoff, and it delivers once the read works."""
    hook = WebhookReceiver()
    await hook.start()
    db = tmp_path / "o.db"
    outbox, metrics = Outbox(db, SystemClock()), Metrics()
    sender = make_sender(outbox, hook.url, metrics)
    supervisor = Supervisor(clock=SystemClock(), metrics=metrics, initial_s=0.05, cap_s=0.2)
    real_due = outbox.due
    failures = 3

    def flaky_due(*args: object, **kw: object) -> object:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError(28, "No space left on device")
        return real_due(*args, **kw)  # type: ignore[arg-type]

    outbox.due = flaky_due  # type: ignore[method-assign]
    try:
        event = outbox.add("call.summary", {}, endpoints=[endpoint(hook.url)], occurred_at=1.7e9)
        supervisor.spawn("webhook-sender", sender.run)
        await hook.wait_for(lambda: event in hook.unique(), 10)
    finally:
        await supervisor.aclose()
        await sender.aclose()
        await hook.stop()
    assert supervisor.tasks["webhook-sender"].restarts == 3
    assert sample(metrics, "spoofwatch_task_restarts_total", task="webhook-sender") == 3
    assert "No space left" in supervisor.tasks["webhook-sender"].last_error
    outbox.close()
