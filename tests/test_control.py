"""scheduler/control.py: requests from the admin, carried out by the active scheduler.

The end-to-end paths (run now, pause, resume through the admin and a real
``runapscheduler``) are in test_process.py and test_robustness.py; here, the
control thread's own decisions on a real database and a real executor.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

import tests.jobs  # noqa: F401 - declares tests.nightly, which a request asks for
from scheduler.control import Control
from scheduler.models import Job, JobRun, SchedulerInstance
from scheduler.service import Parts, make_parts

pytestmark = pytest.mark.django_db(transaction=True)


class StopAfterTheLook(threading.Event):
    """A stop signal that lands just after the control loop looked for one: the first
    look sees none, every later one does."""

    def __init__(self) -> None:
        super().__init__()
        self.looks = 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks > 1


def started_parts() -> Parts:
    """A scheduler process's parts on their own (no lease), the executor started."""
    parts = make_parts()
    parts.executor.start(parts.scheduler, "default")
    return parts


def queued_request(job_id: str = "t.hourly") -> JobRun:
    request = JobRun.objects.request_row(job_id, job_id, "tester")
    request.save()
    return request


def test_a_stop_between_the_look_and_the_submission_puts_the_request_back_quietly() -> None:
    """The stop signal's shutdown closes the pool while the control thread is between its
    look at the stop flag and the submission: the request goes back to the queue for the
    next active scheduler, and no error is raised (the soak found a traceback here)."""
    parts = started_parts()
    request = queued_request()
    parts.runner.stopping = StopAfterTheLook()
    parts.executor.cancel_waiting()  # what the stop does, concurrently
    control = Control(parts.scheduler, parts.store, parts.executor, threading.Event())

    assert control.start_queued_runs() == 0

    request.refresh_from_db()
    assert request.status == JobRun.Status.QUEUED
    assert (request.pid, request.instance, request.hostname) == (None, "", "")


def test_a_submission_that_fails_without_a_stop_is_an_error_and_the_request_stays_queued() -> None:
    parts = started_parts()
    requests = [queued_request("t.one"), queued_request("t.two")]  # one slot each
    parts.executor.cancel_waiting()
    control = Control(parts.scheduler, parts.store, parts.executor, threading.Event())

    with pytest.raises(RuntimeError, match="after shutdown"):
        control.start_queued_runs()

    # The whole batch went back to the queue, not only the run whose submission failed.
    for request in requests:
        request.refresh_from_db()
        assert request.status == JobRun.Status.QUEUED


def test_an_idle_active_scheduler_asks_one_statement_a_poll_and_still_sees_requests() -> None:
    parts = make_parts()
    parts.scheduler.start(paused=True)  # the control thread wakes its main loop
    control = Control(parts.scheduler, parts.store, parts.executor, threading.Event())
    control.poll()  # the first poll of an active scheduler looks at everything
    with CaptureQueriesContext(connection) as queries:
        for _ in range(3):
            control.poll()
    # Once a poll: is anything pending? (It used to be three: pauses, running, queued.)
    assert len(queries) == 3
    assert all("EXISTS" in query["sql"] for query in queries)

    # A run requested meanwhile is seen and started by the next poll.
    request = queued_request("tests.nightly")
    control.poll()
    request.refresh_from_db()
    assert request.status in (JobRun.Status.RUNNING, JobRun.Status.SUCCEEDED)
    parts.scheduler.shutdown(wait=True)
    request.refresh_from_db()
    assert request.status == JobRun.Status.SUCCEEDED, request.exception


def test_requests_pending_tells_a_pause_from_a_run_request() -> None:
    now = timezone.now()
    assert Control.requests_pending(now) == (False, False, None)
    Job.objects.create(id="t.job", name="t.job", synced_at=timezone.now(), pending_change=True)
    assert Control.requests_pending(now) == (True, False, None)
    queued_request()
    later = timezone.now()
    assert Control.requests_pending(later) == (True, True, None)
    Job.objects.filter(id="t.job").update(pending_change=False)
    assert Control.requests_pending(later) == (False, True, None)


def test_requests_pending_says_when_the_next_queued_run_is_due() -> None:
    """A next attempt due later is not due now; the control thread learns when it will be."""
    now = timezone.now().replace(microsecond=250_000)
    soon, later = now + timedelta(seconds=30), now + timedelta(minutes=5)
    for due in (later, soon):
        JobRun.objects.create(
            job_id="t.job",
            status=JobRun.Status.QUEUED,
            trigger=JobRun.Trigger.RETRY,
            scheduled_at=due,
            attempt=2,
        )
    assert Control.requests_pending(now) == (False, False, soon)
    assert Control.requests_pending(soon) == (False, True, later)
    assert Control.requests_pending(later) == (False, True, None)


def waiting_row(job_id: str, trigger: str, due_in: float = 0) -> JobRun:
    return JobRun.objects.create(
        job_id=job_id,
        status=JobRun.Status.QUEUED,
        trigger=trigger,
        scheduled_at=timezone.now() + timedelta(seconds=due_in),
        attempt=2 if trigger == JobRun.Trigger.RETRY else 1,
    )


def test_pausing_a_job_skips_its_waiting_retries_and_fire_times_not_its_run_now() -> None:
    parts = make_parts()
    parts.scheduler.start(paused=True)
    control = Control(parts.scheduler, parts.store, parts.executor, threading.Event())
    Job.objects.create(id="tests.nightly", name="n", synced_at=timezone.now())
    retry = waiting_row("tests.nightly", JobRun.Trigger.RETRY, due_in=60)
    fire_time = waiting_row("tests.nightly", JobRun.Trigger.SCHEDULE)
    request = queued_request("tests.nightly")
    other = waiting_row("tests.hourly", JobRun.Trigger.RETRY, due_in=60)
    Job.objects.filter(id="tests.nightly").update(paused=True, pending_change=True)

    assert control.apply_pause_changes() == 1

    for row in (retry, fire_time, request, other):
        row.refresh_from_db()
    assert (retry.status, fire_time.status) == (JobRun.Status.SKIPPED, JobRun.Status.SKIPPED)
    assert retry.exception == "Skipped: the job was paused before it started."
    assert retry.finished_at is not None
    assert request.status == other.status == JobRun.Status.QUEUED
    parts.scheduler.shutdown(wait=False)


def test_a_retry_not_due_yet_is_left_waiting_and_its_due_time_known() -> None:
    parts = started_parts()
    control = Control(parts.scheduler, parts.store, parts.executor, threading.Event())
    retry = waiting_row("tests.nightly", JobRun.Trigger.RETRY, due_in=60)
    assert control.start_queued_runs() == 0
    retry.refresh_from_db()
    assert retry.status == JobRun.Status.QUEUED
    now = timezone.now()
    assert control.requests_pending(now)[2] == retry.scheduled_at
    assert not control._due(now)
    control.queued(retry)  # as the runner tells it when it files one
    assert control._due(retry.scheduled_at)


def test_a_request_of_a_runjob_process_that_is_gone_is_not_run_its_retry_is() -> None:
    """runjob was killed while it waited: its run-now request is skipped (nobody waits for
    it); its next attempt becomes the schedulers' to run."""
    parts = started_parts()
    control = Control(parts.scheduler, parts.store, parts.executor, threading.Event())
    request = JobRun.objects.request_row("tests.nightly", "n", "runjob (x)", "gone0001")
    request.save()
    retry = waiting_row("tests.hourly", JobRun.Trigger.RETRY)
    JobRun.objects.filter(pk=retry.pk).update(instance="gone0002", hostname="h", pid=1)
    alive = JobRun.objects.request_row("tests.hourly", "h", "runjob (y)", "alive001")
    alive.save()
    SchedulerInstance.objects.create(
        id="alive001",
        hostname="h",
        pid=2,
        version="x",
        role="runjob",
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
    )

    control.start_queued_runs()

    request.refresh_from_db()
    assert request.status == JobRun.Status.SKIPPED
    assert request.exception == "Skipped: the runjob process that asked for it is gone."
    retry.refresh_from_db()
    assert (retry.status, retry.instance, retry.pid) == (JobRun.Status.QUEUED, "", None)
    alive.refresh_from_db()
    # Granted to the runjob process that is alive, which runs it itself.
    assert (alive.status, alive.instance) == (JobRun.Status.RUNNING, "alive001")
    parts.executor.shutdown(wait=True)
