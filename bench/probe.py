"""In-process measurements, run by the harness as ``python -m bench.probe TASK --system S``.

DJANGO_SETTINGS_MODULE and DATABASE_URL pick the project and the database
(none for the ``floor`` system). The result is printed as one JSON line
prefixed with ``BENCH_RESULT``.

wakeup   time of one scheduler wake-up with nothing due (``scheduler._process_jobs()``)
         on the job store the scheduler process left behind
admin    time of the run-history admin list pages, as a logged-in superuser through
         Django's test client
history  database statements and microseconds of overhead per run of a no-op job
isolation  this project: start overhead of a run in a child process against one in a thread
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import RESULT_PREFIX, percentile

# -- set-up ---------------------------------------------------------------------------


def _django() -> None:
    import django

    django.setup()


def _scheduler(system: str, jobs: bool):
    """A started but paused scheduler of ``system``; for ``floor``, with the bench jobs added."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.memory import MemoryJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    if system == "floor":
        from bench import workload

        scheduler = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": ThreadPoolExecutor(10)},
            timezone=UTC,
        )
        if jobs:
            for job in workload.aps_jobs():
                scheduler.add_job(**job)
    elif system == "dja":
        from django.conf import settings
        from django_apscheduler.jobstores import DjangoJobStore

        # The README's BlockingScheduler runs the same BaseScheduler._process_jobs.
        scheduler = BackgroundScheduler(timezone=settings.TIME_ZONE)
        scheduler.add_jobstore(DjangoJobStore(), "default")
    else:
        from scheduler.service import make_scheduler

        scheduler = make_scheduler()
    scheduler.start(paused=True)
    # Its own main thread stays asleep: the probes call the loop body themselves.
    scheduler.wakeup = lambda *args, **kwargs: None
    return scheduler


def _stored_jobs(system: str, scheduler) -> int:
    if system == "floor":
        return len(scheduler._jobstores["default"]._jobs)
    from django_apscheduler.models import DjangoJob

    return DjangoJob.objects.count()


# -- wakeup -----------------------------------------------------------------------------


def wakeup(args: argparse.Namespace) -> dict[str, Any]:
    from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING

    scheduler = _scheduler(args.system, jobs=True)
    store = scheduler._jobstores["default"]
    due = store.get_due_jobs(datetime.now(UTC))
    if due:
        raise SystemExit(f"{len(due)} job(s) are due: the wake-up would run them")
    # The main thread of the scheduler sleeps (paused, no wake-up event): call its
    # loop body here, as the thread does on each wake-up.
    scheduler.state = STATE_RUNNING
    times = []
    wait = None
    for i in range(args.iterations + 3):
        start = time.perf_counter()
        wait = scheduler._process_jobs()
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000)
    scheduler.state = STATE_PAUSED
    result = {
        "wakeup_ms": statistics.median(times),
        "wakeup_p90_ms": percentile(times, 90),
        "stored_jobs": _stored_jobs(args.system, scheduler),
        "next_wakeup_in_s": wait,
    }
    scheduler.shutdown(wait=False)
    return result


# -- admin --------------------------------------------------------------------------------

PAGES = {
    "ours": {
        "list": "/admin/scheduler/jobrun/",
        "by_status": "/admin/scheduler/jobrun/?status__exact=failed",
        "by_job": "/admin/scheduler/jobrun/?job_id__exact=bench.job.007",
        "dashboard": "/admin/scheduler/dashboard/",
    },
    "dja": {
        "list": "/admin/django_apscheduler/djangojobexecution/",
        "by_status": "/admin/django_apscheduler/djangojobexecution/?status__exact=Error%21",
        "by_job": "/admin/django_apscheduler/djangojobexecution/?job__id=bench.job.007",
    },
}


def admin(args: argparse.Namespace) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    user_model = get_user_model()
    user = user_model.objects.filter(username="bench").first()
    if user is None:
        user = user_model.objects.create_superuser("bench", "bench@example.com", "bench")
    # Not setup_test_environment(): it instruments template rendering, which would
    # slow the very pages measured here.
    client = Client(HTTP_HOST="localhost")
    client.force_login(user)
    pages = {}
    for name, url in PAGES[args.system].items():
        response = client.get(url)  # warm-up
        body = response.content.decode(errors="replace")
        # The dashboard lists jobs by name; every other page lists runs of bench.job.*.
        if response.status_code != 200 or (name != "dashboard" and "bench.job." not in body):
            raise SystemExit(
                f"{url}: status {response.status_code}, "
                f"{'rows' if 'bench.job.' in body else 'no rows'} listed"
            )
        times = []
        for _ in range(args.requests):
            start = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - start) * 1000)
        with CaptureQueriesContext(connection) as queries:
            client.get(url)
        slowest = max(queries.captured_queries, key=lambda q: float(q["time"]), default=None)
        pages[name] = {
            "url": url,
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "max_ms": max(times),
            "queries": len(queries.captured_queries),
            "slowest_query_ms": float(slowest["time"]) * 1000 if slowest else None,
            "slowest_query": slowest["sql"][:300] if slowest else None,
        }
    return {"pages": pages}


# -- history ----------------------------------------------------------------------------------


class _StatementCounter:
    """Statements that reach the database, transaction control included.

    SQLite: the sqlite3 trace callback on the connection. PostgreSQL: the
    server's pg_stat_statements for this database (health-check pings, BEGIN
    and COMMIT included), i.e. round trips.
    """

    def __init__(self) -> None:
        from django.db import connection

        self.connection = connection
        self.vendor = connection.vendor
        self.count = 0
        if self.vendor == "sqlite":
            from django.db.backends.signals import connection_created

            connection.ensure_connection()
            self._trace(connection)
            connection_created.connect(lambda sender, connection, **kw: self._trace(connection))
        elif self.vendor == "postgresql":
            import psycopg

            params = dict(connection.get_connection_params())
            self.dbname = params["dbname"]
            for key in ("cursor_factory", "context", "prepare_threshold", "pool"):
                params.pop(key, None)
            params["dbname"] = "postgres"
            self.admin = psycopg.connect(**params, autocommit=True)

    def _trace(self, connection) -> None:
        def count(statement: str) -> None:
            self.count += 1

        connection.connection.set_trace_callback(count)

    def reset(self) -> None:
        self.count = 0
        if self.vendor == "postgresql":
            self.admin.execute("SELECT pg_stat_statements_reset()")

    def statements(self) -> list[tuple[str, int]]:
        """PostgreSQL: each statement the server saw since the reset, with its calls."""
        if self.vendor != "postgresql":
            return []
        rows = self.admin.execute(
            "SELECT calls, query FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s) ORDER BY calls DESC",
            (self.dbname,),
        ).fetchall()
        return [(query[:120], int(calls)) for calls, query in rows]

    def read(self) -> int | None:
        if self.vendor == "sqlite":
            return self.count
        if self.vendor == "postgresql":
            row = self.admin.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s)",
                (self.dbname,),
            ).fetchone()
            return int(row[0])
        return None


def _unique_times():
    last = datetime.now(UTC) - timedelta(seconds=1)
    while True:
        now = datetime.now(UTC)
        last = max(now, last + timedelta(microseconds=1))
        yield last


def history(args: argparse.Namespace) -> dict[str, Any]:
    from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
    from apscheduler.executors.base import run_job

    from bench import workload

    times = _unique_times()
    runs = args.runs
    if args.system == "ours":
        from scheduler.registry import autodiscover
        from scheduler.runner import Runner
        from scheduler.sync import first_job

        specs = autodiscover()
        spec = specs["bench.history.noop"]
        scheduler = _scheduler("ours", jobs=False)
        job = first_job(scheduler, spec, datetime.now(UTC), False)
        # On its own, as ``runjob``: no lease, each result written at once (the
        # synchronous write path this scenario measures).
        runner = Runner()

        def one_run() -> None:
            runner.run_scheduled(job, [next(times)])

        def direct() -> None:
            spec.func(*spec.args, **spec.call_kwargs(next(times)))

    else:
        from apscheduler.triggers.cron import CronTrigger

        scheduler = _scheduler(args.system, jobs=False)
        job = scheduler.add_job(
            workload.noop,
            trigger=CronTrigger.from_crontab("0 3 1 1 *", timezone=UTC),
            id="bench.history.noop",
            max_instances=1,
            replace_existing=True,
        )
        logger_name = "apscheduler.executors.default"

        def one_run() -> None:
            # What the scheduler does for one run: the submission event from the main
            # loop, the run in a worker, and the execution event from the worker.
            run_time = next(times)
            scheduler._dispatch_event(
                JobSubmissionEvent(EVENT_JOB_SUBMITTED, job.id, "default", [run_time])
            )
            for event in run_job(job, "default", [run_time], logger_name):
                scheduler._dispatch_event(event)

        def direct() -> None:
            next(times)
            job.func(*job.args, **job.kwargs)

    result: dict[str, Any] = {}
    for _ in range(3):
        one_run()  # warm-up: connections open, code paths loaded

    if args.system != "floor":
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as captured:
            one_run()
        result["queries_per_run"] = len(captured.captured_queries)
        result["sql"] = [q["sql"][:160] for q in captured.captured_queries]
        counter = _StatementCounter()
        counter.reset()
        sample = min(runs, 50)
        for _ in range(sample):
            one_run()
        statements = counter.read()
        if counter.vendor == "postgresql":
            result["server_statements"] = counter.statements()
        result["statements_per_run"] = statements / sample if statements is not None else None
        result["statements_source"] = (
            "pg_stat_statements" if counter.vendor == "postgresql" else "sqlite3 trace"
        )
    else:
        result["queries_per_run"] = 0
        result["statements_per_run"] = 0

    start = time.perf_counter()
    for _ in range(runs):
        one_run()
    through = (time.perf_counter() - start) / runs
    start = time.perf_counter()
    for _ in range(runs):
        direct()
    plain = (time.perf_counter() - start) / runs
    result.update(
        run_us=through * 1e6,
        direct_us=plain * 1e6,
        overhead_us=(through - plain) * 1e6,
        runs=runs,
    )
    if args.system == "ours":
        result["grouped_cpu_us"] = _grouped_cpu_us(times)
    if args.system != "floor":
        result["history_rows"] = _history_rows(args.system)
    scheduler.shutdown(wait=False)
    return result


# Runs per group in _grouped_cpu_us: what the load scenario's claims and result writes
# gather (200 runs a second, claimed 0.1 s ahead, written every 0.1 s).
GROUP = 20


def _grouped_cpu_us(times: Iterator[datetime], groups: int = 100) -> float:
    """This project: CPU microseconds per run of the history's two writes alone, grouped as
    under load: one claim INSERT of GROUP fire times, one write of their GROUP outcomes
    (the CPU that a scheduler process spends on its history per run, whatever else it
    does; the load scenario's floor spends none)."""
    from scheduler.claims import Claims
    from scheduler.lease import Alone
    from scheduler.results import ResultWriter

    writer = ResultWriter()  # not started: writes in the caller's thread
    claims = Claims(Alone(), writer)
    jobs = [f"bench.history.group{i:02d}" for i in range(GROUP)]

    def one_group() -> None:
        at = next(times)
        runs = claims.claim_many([claims.new_row(job, job, at) for job in jobs])
        for run in runs:
            run.status = "succeeded"
            run.finished_at = run.started_at
            run.duration = 0.001
        writer.write(runs)

    for _ in range(3):
        one_group()
    start = time.process_time()
    for _ in range(groups):
        one_group()
    return (time.process_time() - start) / (groups * GROUP) * 1e6


def _history_rows(system: str) -> int:
    if system == "ours":
        from scheduler.models import JobRun

        return JobRun.objects.count()
    from django_apscheduler.models import DjangoJobExecution

    return DjangoJobExecution.objects.count()


def isolation(args: argparse.Namespace) -> dict[str, Any]:
    """Milliseconds from asking for a run of a no-op job to its outcome, in a thread and in
    a child process (``isolation="process"``), ``--runs`` each after 5 warm-ups; and the
    fork server's resident memory, which every child starts as."""
    from scheduler.body import make_call, run_here
    from scheduler.isolation import Isolation
    from scheduler.registry import autodiscover

    specs = autodiscover()
    spec = specs["bench.isolation.noop"]
    children = Isolation()
    children.start()

    def timed(one_run) -> list[float]:
        for _ in range(5):
            one_run()
        spans = []
        for _ in range(args.runs):
            start = time.perf_counter()
            one_run()
            spans.append((time.perf_counter() - start) * 1000)
        return spans

    thread = timed(lambda: run_here(make_call(spec, None, None), 65536))
    process = timed(lambda: children.run(spec.id, None, None, 65536))
    from multiprocessing import forkserver

    server_pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    return {
        "thread_p50_ms": percentile(thread, 50),
        "thread_p99_ms": percentile(thread, 99),
        "process_p50_ms": percentile(process, 50),
        "process_p99_ms": percentile(process, 99),
        "overhead_p99_ms": percentile(process, 99) - percentile(thread, 99),
        "server_rss_mb": _rss_mb(server_pid),
        "runs": args.runs,
    }


def _rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- main ------------------------------------------------------------------------------------

TASKS = {"wakeup": wakeup, "admin": admin, "history": history, "isolation": isolation}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.probe")
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("--system", choices=["floor", "dja", "ours"], required=True)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.system != "floor":
        if not os.environ.get("DJANGO_SETTINGS_MODULE"):
            raise SystemExit("DJANGO_SETTINGS_MODULE is not set")
        _django()
    result = TASKS[args.task](args)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
