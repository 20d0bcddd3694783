"""scheduler/execution.py: the seam between the runtime and where a run's body runs.

The thread executor is the first implementation; a second one here, written
as a remote executor would be (the order travels as plain values, and a
``Runner`` made where it runs carries it out), shows that claims,
``max_instances`` and the history stay on the runtime's side.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apscheduler.executors.base import MaxInstancesReachedError

import tests.jobs
from scheduler.execution import RunExecutor, RunOrder, ThreadRunExecutor
from scheduler.models import JobRun
from scheduler.runner import Runner
from tests.helpers import due_job, started_executor

pytestmark = pytest.mark.django_db(transaction=True)


class Recording:
    """A runner-side stand-in that notes which thread carried out which orders."""

    def __init__(self, release: threading.Event | None = None) -> None:
        self.seen: list[tuple[str, datetime, str]] = []
        self.release = release
        self.started = threading.Event()

    def carry_out_in_order(self, orders: Sequence[RunOrder]) -> None:
        self.started.set()
        for order in orders:
            if self.release is not None:
                self.release.wait(5)
            self.seen.append((order.job_id, order.scheduled_at, threading.current_thread().name))


AT = datetime(2030, 5, 1, 3, tzinfo=UTC)


def test_a_submission_s_orders_run_one_after_the_other_on_one_thread() -> None:
    recording = Recording()
    runs = ThreadRunExecutor(4, recording)
    orders = [RunOrder("t.backlog", AT + timedelta(minutes=i)) for i in range(3)]
    runs.submit(orders).result(5)
    runs.shutdown()
    assert [(job, at) for job, at, _ in recording.seen] == [
        (o.job_id, o.scheduled_at) for o in orders
    ]
    assert len({thread for _, _, thread in recording.seen}) == 1


def test_the_thread_executor_starts_its_workers_as_the_scheduler_starts() -> None:
    before = set(threading.enumerate())
    scheduler, executor = started_executor(3)
    try:
        started = set(threading.enumerate()) - before
        assert sorted(t.name for t in started) == [f"scheduler-worker-{i}" for i in (1, 2, 3)]
    finally:
        executor.shutdown(wait=True)


def test_free_counts_the_submissions_not_finished_and_cancel_waiting_cancels_the_rest() -> None:
    release = threading.Event()
    recording = Recording(release)
    runs = ThreadRunExecutor(1, recording)
    first = runs.submit([RunOrder("t.a", AT)])
    assert recording.started.wait(5)  # on the only thread now
    waiting = runs.submit([RunOrder("t.b", AT)])
    assert runs.free() == -1  # one running, one waiting for the only thread
    runs.cancel_waiting()
    release.set()
    first.result(5)
    assert waiting.cancelled()
    assert [job for job, _, _ in recording.seen] == ["t.a"]
    assert runs.free() == 1


class Remote(RunExecutor):
    """An executor as a worker fleet would be: only plain values travel (job id, fire time,
    run id, attempt), and the far side makes its own Runner and row object."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, datetime, int | None, int]] = []
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def submit(self, orders: Sequence[RunOrder]) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        wire = [(o.job_id, o.scheduled_at, o.run_id, o.attempt) for o in orders]
        self.sent += wire

        def far_side() -> None:
            worker = Runner()  # the worker's own: no lease, results written at once
            for job_id, at, run_id, attempt in wire:
                run = JobRun.objects.get(pk=run_id) if run_id is not None else None
                worker.carry_out_in_order([RunOrder(job_id, at, run, attempt=attempt)])
            future.set_result(None)

        threading.Thread(target=far_side).start()
        return future

    def free(self) -> int:
        return 10

    def cancel_waiting(self) -> None:
        pass

    def shutdown(self, wait: bool = True) -> None:
        pass


def test_another_executor_behind_the_seam_gets_claimed_runs_and_records_through_the_runner() -> (
    None
):
    tests.jobs.CALLS.clear()
    remote = Remote()
    scheduler, executor = started_executor(1, runs=remote)
    assert remote.started == 1  # readied as the scheduler started its executor
    now = datetime.now(UTC)
    at = now.replace(microsecond=0)
    job = due_job(scheduler, "tests.nightly", at)  # declared in code: found by id over there

    executor.book.claim_due([job], now)  # the runtime claims, as the main loop does
    (claim,) = JobRun.objects.filter(job_id="tests.nightly")
    executor.submit_job(job, [at])
    # max_instances stays on the runtime's side: a second submission is refused here.
    with pytest.raises(MaxInstancesReachedError):
        executor.submit_job(job, [at])

    assert remote.sent == [("tests.nightly", at, claim.pk, 1)]
    for _ in range(100):
        claim.refresh_from_db()
        if claim.status != "running":
            break
        threading.Event().wait(0.05)
    assert (claim.status, claim.output) == ("succeeded", "nightly ran\n")
    assert tests.jobs.CALLS == [("nightly", at)]
