"""Scenario 8, one-off runs from code: enqueued from one web process, executed by one runner.

The same trivial job (it appends its number to a file) three ways, on the same
database with the same settings (bench/oneoff_settings.py, jobs in bench/jobs_oneoff.py):

* this project: a ``@job`` without a schedule, ``work.schedule(args=[i])``, run by
  ``manage.py runapscheduler`` (default settings: 20 worker threads);
* this project through Django's task API: ``@task(backend="scheduler")`` on
  ``scheduler.tasks.SchedulerBackend``, ``work_task.enqueue(i)``, run by ``runapscheduler``;
* django-tasks-db: ``@task(backend="default")`` on its ``DatabaseBackend``,
  ``dtdb_task.enqueue(i)``, run by ``manage.py db_worker`` with its defaults (one task at
  a time, ``--interval 1`` between looks when the queue is empty, a random start-up
  delay of up to 1 s), as its README runs it.

Enqueue: in a separate process (``python -m bench.oneoff_probe enqueue``), the runs
enqueued one call at a time in a loop, each call its own autocommit transaction (one
row per request, as a view would); rate and per-call latency. Execute: those runs,
all due, wait in the table; then one runner starts, and the time runs from the line
it prints once it runs work ("Active scheduler now"; django-tasks-db's "Starting
worker") until the harness, polling the table every 20 ms, finds every row final
(``scheduler_jobrun`` not queued or running; django-tasks-db's rows not READY or
RUNNING). That time includes what each runner does before its first run (this
project's control thread looks at the queue a poll interval, 1 s, after taking
over; db_worker's start-up delay): the split is in "ready to the first run's
start" and the steady rate from the first run's start to the last one's end (the
rows' own timestamps). Every run must succeed exactly once (the file's lines: one
per number), or the scenario fails. Runner CPU is utime + stime of its process
over the same window. The order of the three systems rotates per repeat. In the
ratios: ours = this project's ``schedule()``, ours_tasks = its task backend, dtdb =
django-tasks-db.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import PYTHON, RESULT_PREFIX, BenchError, Proc, loadavg, run_checked
from bench.databases import Database, project_env
from bench.scenarios import Collector, Context, Metric, Ratio, Target

NAME = "oneoff"
TITLE = "8. One-off runs from code"
SUMMARY = "{runs:,} one-off runs of a trivial job, enqueued from one process, run by one runner"

PROJECT = "oneoff"
SYSTEMS = ("ours", "ours_tasks", "dtdb")
ARGV = {
    "ours": [PYTHON, "manage.py", "runapscheduler"],
    "ours_tasks": [PYTHON, "manage.py", "runapscheduler"],
    "dtdb": [PYTHON, "manage.py", "db_worker"],
}
READY = {
    "ours": "Active scheduler now",
    "ours_tasks": "Active scheduler now",
    "dtdb": "Starting worker",
}
# (table, statuses still to run, the successful status)
TABLE = {
    "ours": ("scheduler_jobrun", ("queued", "running"), "succeeded"),
    "ours_tasks": ("scheduler_jobrun", ("queued", "running"), "succeeded"),
    # DBTaskResult._meta.db_table (django-tasks-db keeps its old app label's table name).
    "dtdb": ("django_tasks_database_dbtaskresult", ("READY", "RUNNING"), "SUCCESSFUL"),
}
POLL = 0.02

METRICS = [
    Metric("enqueue_per_s", "enqueued from one process", "runs/s", 0, SYSTEMS),
    Metric("enqueue_p50_ms", "  one enqueue call, p50", "ms", 2, SYSTEMS),
    Metric("enqueue_p99_ms", "  one enqueue call, p99", "ms", 2, SYSTEMS),
    Metric("execute_per_s", "executed by one runner, ready to all final", "runs/s", 0, SYSTEMS),
    Metric("execute_s", "  ready to all final", "s", 2, SYSTEMS),
    Metric("first_start_s", "  ready to the first run's start", "s", 2, SYSTEMS),
    Metric("steady_per_s", "  first run's start to last run's end", "runs/s", 0, SYSTEMS),
    Metric("cpu_ms_per_run", "runner CPU per run", "ms", 2, SYSTEMS),
    Metric("load1", "load average (1 min) at its start", "", 2, SYSTEMS),
]
RATIOS = [
    Ratio("enqueue_per_s", "ours", "dtdb"),
    Ratio("enqueue_per_s", "ours_tasks", "dtdb"),
    Ratio("execute_per_s", "ours", "dtdb"),
    Ratio("execute_per_s", "ours_tasks", "dtdb"),
]
TARGETS = [
    Target(
        "executes at least as many runs/s as django-tasks-db's db_worker",
        "execute_per_s:ours/dtdb",
        ">=",
        1,
        unit="×",
        ratio=True,
    ),
]


def params(args) -> dict[str, Any]:
    return {"runs": args.oneoff_runs}


def _epoch(value: Any) -> float:
    if isinstance(value, str):  # SQLite: naive UTC text
        value = datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.timestamp()


def _probe(args: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """``python -m bench.oneoff_probe ARGS``; the JSON it prints last."""
    result = run_checked(
        [PYTHON, "-m", "bench.oneoff_probe", *args], env, 3600, f"oneoff probe {args[0]}"
    )
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise BenchError(f"oneoff probe {args[0]} printed no result:\n{result.stdout[-2000:]}")


def _enqueue(ctx: Context, system: str, database: Database, runs: int, tag: str) -> dict:
    return _probe(
        ["enqueue", "--system", system, "--runs", str(runs)],
        project_env(PROJECT, database.url),
        ctx.workdir / f"{tag}.enqueue.log",
    )


def _execute(ctx: Context, system: str, database: Database, runs: int, tag: str) -> dict:
    table, pending, success = TABLE[system]
    obs = ctx.workdir / f"{tag}.obs"
    env = project_env(PROJECT, database.url, BENCH_OBS=obs)
    load1 = (loadavg() or [None])[0]
    proc = Proc(system, ARGV[system], env, ctx.workdir / f"{tag}.log")
    connection = database.connect()
    # The time out: generous, a figure is wanted even from a slow runner.
    limit = max(120.0, runs / 20)
    pending_sql = (
        f"SELECT COUNT(*) FROM {table} WHERE status IN ({', '.join(repr(s) for s in pending)})"
    )
    try:
        ready = proc.started + proc.wait_line(READY[system], ctx.args.start_timeout)
        cpu0 = proc.cpu()
        # The ready line's wall-clock time, for the rows' own timestamps.
        ready_wall = time.time() - (time.monotonic() - ready)
        while True:
            left = connection.execute(pending_sql).fetchone()[0]
            if left == 0:
                done = time.monotonic()
                break
            if proc.popen.poll() is not None:
                raise BenchError(
                    f"{system} exited with {proc.popen.returncode}, {left} runs not final:\n"
                    f"{proc.tail()}"
                )
            if time.monotonic() - ready > limit:
                raise BenchError(f"{system}: {left} of {runs} runs not final after {limit:.0f} s")
            time.sleep(POLL)
        cpu1 = proc.cpu()
        statuses = dict(
            connection.execute(f"SELECT status, COUNT(*) FROM {table} GROUP BY status").fetchall()
        )
        first, last = connection.execute(
            f"SELECT MIN(started_at), MAX(finished_at) FROM {table}"
        ).fetchone()
    finally:
        connection.close()
        proc.stop()
    lines = obs.read_text().split() if obs.exists() else []
    counted = Counter(lines)
    twice = sum(1 for n in counted.values() if n > 1)
    if statuses != {success: runs} or len(lines) != runs or len(counted) != runs or twice:
        raise BenchError(
            f"{system}: not every run succeeded exactly once: rows by status {statuses}, "
            f"{len(lines)} runs recorded, {len(counted)} distinct, {twice} run more than once"
        )
    execute_s = done - ready
    span = _epoch(last) - _epoch(first)
    return {
        "execute_s": execute_s,
        "execute_per_s": runs / execute_s,
        "first_start_s": _epoch(first) - ready_wall,
        "steady_per_s": runs / span if span > 0 else None,
        "cpu_ms_per_run": (cpu1 - cpu0) * 1000 / runs
        if cpu0 is not None and cpu1 is not None
        else None,
        "load1": load1,
    }


def run(ctx: Context) -> dict[str, Any]:
    p = params(ctx.args)
    runs = p["runs"]
    collector = Collector()
    for repeat in range(ctx.args.repeat):
        for kind, backend in ctx.backends.items():
            results: dict[str, dict[str, Any]] = {}
            # Rotate the order, so a drift in the machine's load hits each alike.
            order = SYSTEMS[repeat % 3 :] + SYSTEMS[: repeat % 3]
            for system in order:
                ctx.log(f"{NAME}: repeat {repeat + 1}/{ctx.args.repeat}: {system} on {kind}")
                database = backend.fresh(PROJECT, NAME)
                tag = ctx.tag(NAME, system, kind)
                try:
                    metrics = _enqueue(ctx, system, database, runs, tag)
                    metrics.update(_execute(ctx, system, database, runs, tag))
                finally:
                    backend.drop(database)
                results[system] = metrics
                collector.add(kind, system, metrics)
            collector.add_ratios(kind, RATIOS, results)
    return {"params": p, **collector.summary()}
