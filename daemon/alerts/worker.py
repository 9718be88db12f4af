"""The one thread that runs outbox calls (daemon.alerts.outbox), in group commits."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from daemon.alerts.outbox import Outbox

_R = TypeVar("_R")


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    future: Future[Any]
    read: bool = False


class OutboxWorker:
    """The one thread that runs outbox calls, in group commits.

    Each call is queued; the thread takes everything queued (up to `max_group`) and runs it in one
    transaction, so a burst of alerts, summaries and delivery marks costs one fsync, not one each
    (per-event fsyncs measured as the whole chunk-latency tail at 300 calls, even off the loop).
    A call's future resolves only after its group is committed: nothing is sent before it is durable.
    Reads (`submit_read`) run outside any write transaction, in submission order with the writes:
    with WAL they go on while another process holds the write lock (e.g. `spoofwatch outbox purge`).
    Mirrors `concurrent.futures.Executor.submit`; after `shutdown()` it raises RuntimeError."""

    def __init__(self, outbox: Outbox, *, max_group: int = 256) -> None:
        self.outbox = outbox
        self.max_group = max_group
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any) -> Future[_R]:
        """A call that writes: it runs inside a group commit."""
        return self._put(_Job(fn, args, kwargs, Future()))

    def submit_read(self, fn: Callable[..., _R], /, *args: Any, **kwargs: Any) -> Future[_R]:
        """A call that only reads: no write lock is taken for it."""
        return self._put(_Job(fn, args, kwargs, Future(), read=True))

    def _put(self, job: _Job) -> Future[Any]:
        if self._closed:
            raise RuntimeError("outbox worker is shut down")
        self._jobs.put(job)
        return job.future

    def shutdown(self) -> None:
        """Run what is queued, then stop the thread (blocks until it has)."""
        if not self._closed:
            self._closed = True
            self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._jobs.get()
            if first is None:
                return
            jobs = [first]
            while len(jobs) < self.max_group:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                jobs.append(job)
            run: list[_Job] = []
            for job in jobs:  # contiguous writes share a group commit; reads run between them, in order
                if not job.future.set_running_or_notify_cancel():
                    continue
                if run and run[-1].read != job.read:
                    self._run_part(run)
                    run = []
                run.append(job)
            if run:
                self._run_part(run)

    def _run_part(self, jobs: list[_Job]) -> None:
        if jobs[0].read:
            for job in jobs:
                try:
                    job.future.set_result(job.fn(*job.args, **job.kwargs))
                except Exception as exc:
                    job.future.set_exception(exc)
        else:
            self._run_group(jobs)

    def _run_group(self, jobs: list[_Job]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.outbox.group():
                for job in jobs:
                    try:
                        outcomes.append((True, job.fn(*job.args, **job.kwargs)))
                    except Exception as exc:  # this call's failure is its own; the group goes on
                        outcomes.append((False, exc))
        except Exception as exc:  # the commit failed: nothing of this group is durable
            for job in jobs:
                job.future.set_exception(exc)
            return
        for job, (ok, value) in zip(jobs, outcomes, strict=True):
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)
