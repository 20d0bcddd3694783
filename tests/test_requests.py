"""scheduler/requests.py: the public API for asking the scheduler for runs from code
(``myjob.schedule(...)``, ``scheduler.schedule``, ``run_now``, ``pause``, ``resume``,
``cancel``), first in this process against the test database, then end to end with
real ``runapscheduler`` processes and ``manage.py shell`` as the calling process."""

from __future__ import annotations

import importlib
import textwrap
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

import scheduler
from scheduler.models import Job, JobRun
from scheduler.registry import registry
from tests.proc.harness import STARTED_LINE, SchedulerEnv, wait_for

ONEOFF = "tests.proc.oneoff"
FAST = {"POLL_INTERVAL": 0.2}
FINAL = ("succeeded", "failed", "timed_out", "interrupted", "missed", "skipped")


@pytest.fixture
def oneoff() -> Any:
    from tests.proc import oneoff as module

    if "oneoff.remind" not in registry:
        importlib.reload(module)
    return module


# -- in this process ------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_schedule_writes_a_queued_row_with_its_due_time_and_arguments(oneoff: Any) -> None:
    before = timezone.now()
    run = oneoff.remind.schedule(delay=timedelta(hours=1), args=[7], kwargs={"note": "hi"})
    row = JobRun.objects.get(pk=run.pk)
    assert (row.status, row.trigger, row.job_id) == ("queued", "code", "oneoff.remind")
    assert row.arguments == {"args": [7], "kwargs": {"note": "hi"}}
    assert before + timedelta(hours=1) <= row.scheduled_at <= timezone.now() + timedelta(hours=1)
    assert row.job_name == "Send a reminder (a line in the marks file)."

    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    other = scheduler.schedule(
        "oneoff.report", at=at, kwargs={"customer": "acme"}, requested_by="ann"
    )
    assert JobRun.objects.get(pk=other.pk).scheduled_at == at
    assert other.requested_by == "ann"
    # A delay in seconds, and no delay at all (now).
    assert oneoff.count.schedule(delay=2.5, args=[1]).scheduled_at > before
    assert oneoff.count.schedule(args=[2]).scheduled_at <= timezone.now()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (
            lambda m: m.remind.schedule(at=datetime(2030, 1, 1), args=[1]),
            ValueError,
            "has no time zone",
        ),
        (lambda m: m.remind.schedule(at="tomorrow", args=[1]), TypeError, "must be a datetime"),
        (lambda m: m.remind.schedule(delay=-1, args=[1]), ValueError, "from 0 to 3653 days"),
        (lambda m: m.remind.schedule(delay="5", args=[1]), TypeError, "timedelta or a number"),
        (lambda m: m.remind.schedule(delay=True, args=[1]), TypeError, "timedelta or a number"),
        (
            lambda m: m.remind.schedule(at=timezone.now(), delay=1, args=[1]),
            ValueError,
            "not both",
        ),
        (lambda m: m.remind.schedule(args=[1], key="k" * 256), ValueError, "at most 255"),
        (lambda m: m.remind.schedule(kwargs={"note": "x"}), scheduler.ArgumentError, "user_id"),
        (lambda m: scheduler.schedule("no.such.job"), scheduler.UnknownJob, "No job 'no.such.job'"),
        (lambda m: scheduler.schedule(print), scheduler.UnknownJob, "print is not a job"),
    ],
)
def test_a_bad_request_is_refused_naming_what_is_wrong_and_writes_nothing(
    oneoff: Any, call: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error) as caught:
        call(oneoff)
    assert words in str(caught.value)
    assert not JobRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_an_idempotency_key_schedules_once(oneoff: Any) -> None:
    first = oneoff.remind.schedule(delay=60, args=[1], key="signup-1")
    again = oneoff.remind.schedule(delay=90, args=[2], key="signup-1")
    assert again.pk == first.pk
    assert again.arguments == {"args": [1]}  # the first call's stand
    other_job = oneoff.count.schedule(args=[1], key="signup-1")  # keys are per job
    assert other_job.pk != first.pk
    assert JobRun.objects.count() == 2
    # Inside the caller's transaction, a repeated key does not break the transaction.
    with transaction.atomic():
        assert oneoff.remind.schedule(args=[3], key="signup-1").pk == first.pk
        third = oneoff.remind.schedule(args=[3], key="signup-3")
    assert JobRun.objects.filter(pk=third.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_a_run_scheduled_in_a_transaction_that_rolls_back_is_not_there(oneoff: Any) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        oneoff.remind.schedule(args=[1])
        raise Abort
    assert not JobRun.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_cancel_before_the_start_and_not_after(oneoff: Any) -> None:
    run = oneoff.remind.schedule(delay=60, args=[1])
    assert run.cancel() is True
    assert (run.status, run.exception) == ("skipped", "Cancelled before it started.")
    assert run.cancel() is False  # ended already
    started = oneoff.remind.schedule(args=[2])
    JobRun.objects.filter(pk=started.pk).update(status="running")
    assert scheduler.cancel(started.pk, "changed my mind") is False
    assert JobRun.objects.get(pk=started.pk).status == "running"


@pytest.mark.django_db(transaction=True)
def test_run_now_pause_and_resume_are_the_admins_requests(oneoff: Any) -> None:
    run = oneoff.report.run_now(requested_by="ops")
    assert (run.status, run.trigger, run.requested_by) == ("queued", "manual", "ops")
    with pytest.raises(scheduler.UnknownJob, match="not in the job table"):
        oneoff.report.pause()
    Job.objects.create(
        id="oneoff.report",
        name="r",
        func="f",
        kind="cron",
        schedule="",
        timezone="UTC",
        options={},
        fingerprint="",
        synced_at=timezone.now(),
    )
    assert scheduler.pause("oneoff.report") is True
    assert scheduler.pause("oneoff.report") is False
    assert Job.objects.get(pk="oneoff.report").pending_change is True
    assert oneoff.report.resume() is True
    assert Job.objects.get(pk="oneoff.report").paused is False


def test_a_function_declared_as_two_jobs_asks_which(oneoff: Any) -> None:
    from scheduler.registry import _attach

    def twice() -> None: ...

    _attach(twice, "a.one")
    _attach(twice, "a.two")
    with pytest.raises(TypeError, match=r"declared as 2 jobs \(a.one, a.two\)"):
        twice.schedule()  # type: ignore[attr-defined]
    with pytest.raises(scheduler.UnknownJob, match="pass the id"):
        scheduler.schedule(twice)


# -- end to end ----------------------------------------------------------------------------------


def shell(env: SchedulerEnv, code: str, **overrides: Any) -> str:
    """Run ``code`` in ``manage.py shell`` on the env's database (a process with the
    settings and no scheduler); its output."""
    result = env.manage(
        "shell", "-c", textwrap.dedent(code), modules=ONEOFF, timeout=120, **overrides
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def starts(env: SchedulerEnv, prefix: str) -> list[str]:
    return [mark for mark in env.marks() if mark.startswith(prefix)]


def final(env: SchedulerEnv, job_id: str, count: int, timeout: float = 30) -> list[dict]:
    def done() -> list[dict[str, Any]] | None:
        rows = env.runs(job_id)
        if len(rows) >= count and all(row["status"] in FINAL for row in rows):
            return rows
        return None

    return wait_for(done, timeout, f"{count} final runs of {job_id}", interval=0.1)


@pytest.mark.integration
def test_a_run_scheduled_from_a_shell_runs_once_at_its_time_with_its_arguments(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(ONEOFF, **FAST)
    out = shell(
        env,
        """
        from datetime import timedelta
        from tests.proc.oneoff import remind
        run = remind.schedule(delay=timedelta(seconds=3), args=[42], kwargs={"note": "ünï"})
        print(run.pk, run.scheduled_at.isoformat())
        """,
    )
    run_id, due = out.split()[-2:]
    (row,) = final(env, "oneoff.remind", 1)
    time.sleep(1)
    assert proc.stop() == 0
    assert row["id"] == int(run_id)
    assert row["status"] == "succeeded", row
    assert row["trigger"] == "code"
    assert row["output"] == "reminded user 42: ünï\n"
    started = (row["started_at"] - row["scheduled_at"]).total_seconds()
    assert 0 <= started < 0.6, started  # at its time, within a poll
    assert starts(env, "start oneoff.remind") == [f"start oneoff.remind 42:ünï {due}"]
    assert len(env.runs("oneoff.remind")) == 1


@pytest.mark.integration
def test_rolled_back_never_runs_cancelled_never_runs_keyed_runs_once(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(ONEOFF, **FAST)
    shell(
        env,
        """
        from django.db import transaction
        from tests.proc.oneoff import remind
        try:
            with transaction.atomic():
                remind.schedule(delay=1, args=[1], kwargs={"note": "rolled back"})
                raise RuntimeError("the view failed")
        except RuntimeError:
            pass
        remind.schedule(delay=1, args=[2], kwargs={"note": "cancelled"}).cancel()
        for _ in range(3):  # a request retried by the caller's code
            remind.schedule(delay=1, args=[3], kwargs={"note": "keyed"}, key="user-3")
        remind.schedule(delay=1.5, args=[4], kwargs={"note": "plain"})
        """,
    )
    rows = final(env, "oneoff.remind", 3)
    time.sleep(1.5)
    assert proc.stop() == 0
    by_note = {row["arguments"]: row for row in env.runs("oneoff.remind")}
    assert len(by_note) == 3, by_note
    assert [mark.split()[2] for mark in starts(env, "start oneoff.remind")] == [
        "3:keyed",
        "4:plain",
    ]
    statuses = sorted((row["status"], row["key"]) for row in rows)
    assert statuses == [("skipped", ""), ("succeeded", ""), ("succeeded", "user-3")]


@pytest.mark.integration
def test_runs_due_while_no_scheduler_ran_run_at_start_or_are_missed_past_their_grace(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    shell(
        env,
        """
        from tests.proc.oneoff import count, remind
        remind.schedule(args=[5], kwargs={"note": "while down"})
        count.schedule(args=[1])  # misfire_grace_time=2
        """,
    )
    time.sleep(3)  # no scheduler: the count run is more than 2 s late by now
    proc = env.start(ONEOFF, **FAST)
    final(env, "oneoff.remind", 1)
    (counted,) = final(env, "oneoff.count", 1)
    assert proc.stop() == 0
    assert env.runs("oneoff.remind")[0]["status"] == "succeeded"
    assert counted["status"] == "missed"
    assert "beyond misfire_grace_time (2 s)" in counted["exception"]
    assert not starts(env, "start oneoff.count")


@pytest.mark.integration
def test_two_schedulers_run_a_thousand_runs_due_within_ten_seconds_each_once(
    scheduler_env: SchedulerEnv,
) -> None:
    """1,000 runs scheduled in one transaction, due spread over 10 s from +4 s; the
    active scheduler is stopped in the middle and the standby runs the rest."""
    env = scheduler_env
    first = env.start(ONEOFF, **FAST)
    second = env.start(ONEOFF, wait=STARTED_LINE, **FAST)
    shell(
        env,
        """
        from datetime import timedelta
        from django.db import transaction
        from django.utils import timezone
        from tests.proc.oneoff import remind
        start = timezone.now() + timedelta(seconds=4)
        with transaction.atomic():
            for n in range(1000):
                remind.schedule(at=start + timedelta(milliseconds=10 * n), args=[n])
        """,
    )
    time.sleep(9)
    assert first.stop() == 0
    second.wait_active(20)
    rows = final(env, "oneoff.remind", 1000, timeout=60)
    assert second.stop() == 0
    assert len(rows) == 1000
    assert Counter(row["status"] for row in rows) == {"succeeded": 1000}
    ran = Counter(int(mark.split()[2].split(":")[0]) for mark in starts(env, "start oneoff.remind"))
    assert sorted(ran) == list(range(1000))
    assert max(ran.values()) == 1
    # Both schedulers ran some: the take-over happened mid-way.
    assert len({row["instance"] for row in rows}) == 2


@pytest.mark.integration
def test_a_retried_run_from_code_is_tried_again_with_its_arguments(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(ONEOFF, **FAST)
    shell(
        env, 'from tests.proc.oneoff import flaky; flaky.schedule(args=[7], kwargs={"word": "ü"})'
    )
    rows = final(env, "oneoff.flaky", 2)
    assert proc.stop() == 0
    assert [(r["attempt"], r["trigger"], r["status"]) for r in rows] == [
        (1, "code", "failed"),
        (2, "retry", "succeeded"),
    ]
    assert rows[0]["arguments"] == rows[1]["arguments"]
    assert starts(env, "start oneoff.flaky") == ["start oneoff.flaky 7:ü"] * 2


@pytest.mark.integration
def test_a_run_from_code_in_a_child_process_gets_its_arguments(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(ONEOFF, **FAST)
    shell(env, "from tests.proc.oneoff import isolated; isolated.schedule(args=[11])")
    (row,) = final(env, "oneoff.isolated", 1)
    assert proc.stop() == 0
    assert row["status"] == "succeeded", row
    (mark,) = starts(env, "start oneoff.isolated")
    _, _, n, pid, due = mark.split()
    assert n == "11" and pid != f"pid={proc.pid}"
    assert datetime.fromisoformat(due) == row["scheduled_at"]
