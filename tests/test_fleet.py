"""Runs on a Celery worker fleet (executor="celery", scheduler/fleet.py and scheduler/worker.py)
with a real Redis broker, real ``celery worker`` processes and real ``runapscheduler``
processes: the scheduler claims each fire time, a worker runs it and records it in the
same row."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.proc.harness import STARTED_LINE, SchedulerEnv, wait_for
from tests.proc.workers import RedisServer, RedisUnavailable, start_worker
from tests.test_robustness import finished, request_runs, run_row

pytestmark = pytest.mark.integration

JOBS = "tests.proc.fleet_jobs"
APP = '"tests.proc.celery_app:app"'


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RedisServer]:
    try:
        server = RedisServer(tmp_path)
        server.start()
    except RedisUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


def scheduler(env: SchedulerEnv, broker: RedisServer, modules: str = JOBS, **overrides: Any):
    options = {"POLL_INTERVAL": 0.2, **overrides}
    return env.start(modules, PROC_BROKER=broker.url, CELERY_APP=APP, **options)


def starts(env: SchedulerEnv, job_id: str) -> Counter[str]:
    """Start marks by fire time: a run that ran twice counts 2."""
    return Counter(line.split()[2] for line in env.marks() if line.startswith(f"start {job_id} "))


def test_runs_happen_on_the_workers_and_come_back_to_their_rows(
    scheduler_env: SchedulerEnv, broker: RedisServer
) -> None:
    env = scheduler_env
    w1 = start_worker(env, broker.url, "w1", JOBS)
    w2 = start_worker(env, broker.url, "w2", JOBS)
    proc = scheduler(env, broker)
    wait_for(lambda: len(env.runs("fleet.tick", status="succeeded")) >= 6, 30, "six ticks")
    assert proc.stop() == 0
    time.sleep(1)  # the last runs sent finish on their workers

    ticks = [row for row in env.runs("fleet.tick") if row["status"] != "queued"]
    assert ticks and all(row["status"] == "succeeded" for row in ticks), ticks
    hosts = {row["hostname"].split("@")[0] for row in ticks}
    assert hosts <= {"w1", "w2"} and hosts
    for row in ticks:
        assert row["executor"] == "celery"
        assert row["output"] == f"tick {row['scheduled_at'].isoformat()}\n"
        assert 0 < row["duration"] < 1
        assert row["pid"] not in (proc.pid, w1.pid, w2.pid)  # a pool process of a worker
        # It started on its worker within a fraction of a second of its fire time.
        assert (row["started_at"] - row["scheduled_at"]).total_seconds() < 0.5
    work = env.runs("fleet.work", status="succeeded")
    assert work and all(0.3 <= row["duration"] < 1.3 for row in work)
    # Each ran once.
    assert set(starts(env, "fleet.tick").values()) == {1}


def test_two_schedulers_and_two_workers_run_each_fire_time_once(
    scheduler_env: SchedulerEnv, broker: RedisServer
) -> None:
    """Thirty seconds, as the issue asks; the active scheduler is stopped halfway and the
    other takes over."""
    env = scheduler_env
    start_worker(env, broker.url, "w1", JOBS)
    start_worker(env, broker.url, "w2", JOBS)
    first = scheduler(env, broker)
    second = scheduler(env, broker, wait=STARTED_LINE)
    began = datetime.now(UTC)
    time.sleep(15)
    assert first.stop() == 0
    second.wait_active(20)
    time.sleep(15)
    ended = datetime.now(UTC)
    assert second.stop() == 0
    time.sleep(1)

    window = [
        began.replace(microsecond=0) + timedelta(seconds=n)
        for n in range(2, int((ended - began).total_seconds()) - 1)
    ]
    rows = Counter(row["scheduled_at"] for row in env.runs("fleet.tick"))
    marks = starts(env, "fleet.tick")
    for at in window:
        assert rows[at] == 1, f"{at}: {rows[at]} rows"
        assert marks[at.isoformat()] <= 1, f"{at} ran {marks[at.isoformat()]} times"
    assert max(marks.values()) == 1
    ran = {row["scheduled_at"] for row in env.runs("fleet.tick", status="succeeded")}
    assert len(ran & set(window)) >= len(window) - 3  # the take-over may miss a moment
    for row in env.runs("fleet.tick"):
        # Skipped: a run that started late on a loaded machine still held the slot
        # (max_instances=1) when the next second came; never run twice.
        assert row["status"] in ("succeeded", "missed", "skipped"), row


def test_a_worker_killed_mid_run_leaves_its_run_interrupted(
    scheduler_env: SchedulerEnv, broker: RedisServer
) -> None:
    """kill -9 of the worker and its pool: its heartbeat stops, and the active scheduler
    marks the run interrupted once a lease length has passed."""
    env = scheduler_env
    fast = {"LEASE_SECONDS": 4, "HEARTBEAT_INTERVAL": 1}
    worker = start_worker(env, broker.url, "w1", JOBS, **fast)
    proc = scheduler(env, broker, **fast)
    (run_id,) = request_runs(env, ["fleet.long"])

    def on_the_worker() -> bool:
        # (The scheduler's claim is "running" too, for a moment, before it is sent.)
        row = run_row(env, run_id)
        return bool(row["status"] == "running" and row["hostname"].startswith("w1@"))

    wait_for(on_the_worker, 15, "the run to start on the worker")
    killed = time.monotonic()
    worker.kill_all()
    row = finished(env, [run_id], timeout=20)[run_id]
    took = time.monotonic() - killed
    assert proc.stop() == 0
    assert row["status"] == "interrupted"
    assert "stopped sending heartbeats" in row["exception"]
    assert took < 4 + 2 + 5  # a lease, a heartbeat, and the sweep's turn


def test_celery_time_limits_stop_a_run_at_its_timeout(
    scheduler_env: SchedulerEnv, broker: RedisServer
) -> None:
    """timeout=1: the soft limit stops a sleeping job (its traceback says where); a job that
    swallows it is killed by the hard limit 5 s later; the worker goes on."""
    env = scheduler_env
    start_worker(env, broker.url, "w1", JOBS)
    proc = scheduler(env, broker)
    soft, hard = request_runs(env, ["fleet.sleeps", "fleet.deaf"])
    rows = finished(env, [soft, hard], timeout=30)
    assert rows[soft]["status"] == "timed_out"
    assert "time.sleep(3600)" in rows[soft]["traceback"]
    assert rows[soft]["output"] == "going to sleep\n"
    # Celery counts the limit from the task's start, a few ms before the job's.
    assert 0.8 <= rows[soft]["duration"] < 3
    assert rows[hard]["status"] == "timed_out"
    assert "hard time limit" in rows[hard]["exception"]
    # A timeout is retried, the hard one too: the second attempt returns at once.
    wait_for(lambda: env.runs("fleet.deaf", status="succeeded"), 20, "the second attempt")
    (retry,) = env.runs("fleet.deaf", status="succeeded")
    assert (retry["attempt"], retry["retry_of"]) == (2, hard)
    # The worker replaced the killed pool process and takes runs again.
    (again,) = request_runs(env, ["fleet.flaky"])
    wait_for(lambda: len(env.runs("fleet.flaky", status="succeeded")) == 1, 20, "the next run")
    assert proc.stop() == 0
    assert run_row(env, again)["hostname"].startswith("w1@")


def test_a_failed_run_on_a_worker_is_retried_on_the_fleet(
    scheduler_env: SchedulerEnv, broker: RedisServer
) -> None:
    env = scheduler_env
    start_worker(env, broker.url, "w1", JOBS)
    start_worker(env, broker.url, "w2", JOBS)
    proc = scheduler(env, broker)
    (first_id,) = request_runs(env, ["fleet.flaky"])
    wait_for(lambda: len(env.runs("fleet.flaky")) == 2, 20, "the second attempt")
    rows = finished(env, [row["id"] for row in env.runs("fleet.flaky")], timeout=20)
    assert proc.stop() == 0
    first, second = sorted(rows.values(), key=lambda row: row["attempt"])
    assert (first["status"], second["status"]) == ("failed", "succeeded")
    assert first["exception"].startswith("ConnectionError: the partner API blinked")
    assert (second["trigger"], second["retry_of"], second["executor"]) == (
        "retry",
        first_id,
        "celery",
    )
    assert second["hostname"].split("@")[0] in ("w1", "w2")


def test_a_job_the_workers_code_lacks_is_recorded_failed_never_imported(
    scheduler_env: SchedulerEnv, broker: RedisServer
) -> None:
    env = scheduler_env
    start_worker(env, broker.url, "w1", JOBS)  # without tests.proc.fleet_local
    proc = scheduler(env, broker, modules=f"{JOBS},tests.proc.fleet_local")
    (run_id,) = request_runs(env, ["fleet.only_here"])
    row = finished(env, [run_id])[run_id]
    assert proc.stop() == 0
    assert row["status"] == "failed"
    assert row["exception"] == "Job 'fleet.only_here' is not registered in this worker's code."
    assert row["hostname"].startswith("w1@")


def test_a_run_cancelled_while_it_waits_for_a_worker_never_runs(
    scheduler_env: SchedulerEnv, broker: RedisServer
) -> None:
    env = scheduler_env
    proc = scheduler(env, broker)  # no worker yet: the run waits in the broker
    (run_id,) = request_runs(env, ["fleet.flaky"])
    wait_for(lambda: run_row(env, run_id)["executor"] == "celery", 10, "the run to be sent")
    assert run_row(env, run_id)["status"] == "queued"
    # What the admin's cancel does.
    assert env.execute(
        "UPDATE scheduler_jobrun SET status = 'skipped' WHERE id = ? AND status = 'queued'",
        (run_id,),
    )
    worker = start_worker(env, broker.url, "w1", JOBS)
    wait_for(lambda: "not waiting for a worker: not run" in worker.log(), 20, "the message")
    assert proc.stop() == 0
    assert run_row(env, run_id)["status"] == "skipped"
    assert not starts(env, "fleet.flaky")


def test_a_run_scheduled_from_code_goes_to_a_worker_with_its_arguments(
    scheduler_env: SchedulerEnv, broker: RedisServer
) -> None:
    env = scheduler_env
    start_worker(env, broker.url, "w1", JOBS)
    proc = scheduler(env, broker)
    code = (
        "from tests.proc.fleet_jobs import greet; "
        "greet.schedule(delay=1, args=['ann'], kwargs={'times': 3})"
    )
    result = env.manage("shell", "-c", code, modules=JOBS, PROC_BROKER=broker.url, CELERY_APP=APP)
    assert result.returncode == 0, result.stderr
    row = wait_for(
        lambda: next((r for r in env.runs("fleet.greet") if r["status"] == "succeeded"), None),
        20,
        "the run on the worker",
    )
    assert proc.stop() == 0
    assert (row["trigger"], row["executor"]) == ("code", "celery")
    assert row["hostname"].startswith("w1@")
    (mark,) = [m for m in env.marks() if m.startswith("start fleet.greet ")]
    assert mark.split()[2] == "annx3"


def test_max_instances_counts_the_runs_on_the_whole_fleet(
    scheduler_env: SchedulerEnv, broker: RedisServer
) -> None:
    """A job of 2.5 s every second, max_instances=1, two workers: its runs never overlap,
    whichever worker takes them; the fire times meanwhile are skipped."""
    env = scheduler_env
    start_worker(env, broker.url, "w1", "tests.proc.fleet_slow")
    start_worker(env, broker.url, "w2", "tests.proc.fleet_slow")
    proc = scheduler(env, broker, modules="tests.proc.fleet_slow")
    time.sleep(10)
    assert proc.stop(timeout=20) == 0
    time.sleep(3)  # the last run ends on its worker
    spans = []
    for line in env.marks():
        event, _, at, stamp, _pid = line.split()
        if event == "start":
            spans.append([float(stamp), None, at])
        else:
            for span in spans:
                if span[2] == at:
                    span[1] = float(stamp)
    spans.sort()
    assert len(spans) >= 3
    for before, after in zip(spans, spans[1:], strict=False):
        assert before[1] is not None and before[1] <= after[0], (before, after)
    statuses = Counter(row["status"] for row in env.runs("fleet.slow"))
    assert statuses["skipped"] >= 3 and statuses["succeeded"] >= 3


def test_a_jobs_routing_and_timeout_become_celery_send_options() -> None:
    from scheduler.fleet import send_options
    from tests.helpers import spec

    assert send_options(spec("t.plain", executor="celery")) == {}
    assert send_options(
        spec("t.all", executor="celery", queue="reports", priority=3, expires=30.0, timeout=10.0)
    ) == {
        "queue": "reports",
        "priority": 3,
        "expires": 30.0,
        # The soft limit raises in the job; the hard one kills its process 5 s later.
        "soft_time_limit": 10.0,
        "time_limit": 15.0,
    }


def test_a_broker_outage_loses_and_doubles_nothing(
    scheduler_env: SchedulerEnv, broker: RedisServer
) -> None:
    """Redis is down for 6 s: the first fire time meanwhile is sent once it is back (late,
    within its grace time) and runs once; while it waits to be sent it holds the job's one
    slot, so the fire times after it are recorded skipped (max_instances). Every fire time
    has its row; none runs twice."""
    env = scheduler_env
    worker = start_worker(env, broker.url, "w1", JOBS)
    proc = scheduler(env, broker)
    wait_for(lambda: len(env.runs("fleet.tick", status="succeeded")) >= 2, 20, "two ticks")
    down = datetime.now(UTC)
    broker.stop()
    time.sleep(6)
    broker.start()
    back = datetime.now(UTC)
    wait_for(
        lambda: any(
            row["scheduled_at"] > back + timedelta(seconds=2)
            for row in env.runs("fleet.tick", status="succeeded")
        ),
        40,
        "ticks after the outage",
    )
    assert proc.stop() == 0
    time.sleep(2)
    rows = {row["scheduled_at"]: row for row in env.runs("fleet.tick")}
    during = sorted(at for at in rows if down < at < back)
    assert len(during) >= 4
    first, *rest = during
    assert rows[first]["status"] == "succeeded", rows[first]
    # Sent once the broker was back: late, not lost.
    assert rows[first]["started_at"] >= back - timedelta(seconds=1)
    for at in rest:
        assert rows[at]["status"] in ("skipped", "succeeded"), rows[at]
        if rows[at]["status"] == "skipped":
            assert "max_instances" in rows[at]["exception"]
    # Every fire time from before the outage to the end has its one row.
    seconds = int((max(rows) - min(rows)).total_seconds()) + 1
    assert sorted(rows) == [min(rows) + timedelta(seconds=n) for n in range(seconds)]
    marks = starts(env, "fleet.tick")
    assert max(marks.values()) == 1
    ran = {at.isoformat() for at, row in rows.items() if row["status"] == "succeeded"}
    assert set(marks) == ran
    assert "Could not send the run of 'fleet.tick' to celery (will try again)" in proc.log()
    assert worker.alive()


def _noop() -> None: ...


@pytest.mark.django_db(transaction=True)
def test_runs_sent_to_a_fleet_that_nobody_follows_are_settled_by_the_active_scheduler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a take-over (or a restart) the scheduler that sent a run no longer follows
    it: the active one's sweep records a run whose message was lost (no worker took it
    within its expires, or its misfire_grace_time) missed, and one whose worker went
    silent past its timeout timed out. A run a worker may still take is left alone."""
    from django.utils import timezone

    from scheduler import fleet
    from scheduler.models import JobRun
    from scheduler.registry import JobSpec, registry

    def spec(job_id: str, **options: Any) -> JobSpec:
        return JobSpec(
            id=job_id,
            name=job_id,
            func=_noop,
            kind="cron",
            schedule={"crontab": "0 0 1 1 *"},
            timezone="UTC",
            executor="celery",
            **options,
        )

    monkeypatch.setitem(registry, "lost.expires", spec("lost.expires", expires=10))
    monkeypatch.setitem(registry, "lost.grace", spec("lost.grace", misfire_grace_time=60))
    monkeypatch.setitem(registry, "lost.timeout", spec("lost.timeout", timeout=1))
    now = timezone.now()

    def row(job_id: str, status: str, due_ago: float, started_ago: float | None = None) -> int:
        started = None if started_ago is None else now - timedelta(seconds=started_ago)
        return JobRun.objects.create(
            job_id=job_id,
            status=status,
            trigger="schedule",
            executor="celery",
            scheduled_at=now - timedelta(seconds=due_ago),
            started_at=started,
        ).pk

    expired = row("lost.expires", "queued", 10 + fleet.REPORT_GRACE + 1)
    may_come = row("lost.expires", "queued", 5)
    graced = row("lost.grace", "queued", 60 + fleet.REPORT_GRACE + 1)
    silent = row("lost.timeout", "running", 100, started_ago=1 + 5 + fleet.REPORT_GRACE + 1)
    working = row("lost.timeout", "running", 10, started_ago=2)
    unknown = row("not.in.this.code", "queued", 10**6)

    assert fleet.settle_overdue(now) == 3
    status = dict(JobRun.objects.values_list("pk", "status"))
    assert [status[pk] for pk in (expired, graced, silent)] == ["missed", "missed", "timed_out"]
    assert [status[pk] for pk in (may_come, working, unknown)] == ["queued", "running", "queued"]
    assert "within its expires (10 s after it was due)" in JobRun.objects.get(pk=expired).exception
    assert "misfire_grace_time (60 s" in JobRun.objects.get(pk=graced).exception
    # Settled once: a second sweep finds nothing more.
    assert fleet.settle_overdue(now) == 0
