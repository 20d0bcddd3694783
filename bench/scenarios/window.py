"""Running a system for a measured window of time (firing accuracy and load scenarios).

The system starts on a fresh database and prints its ready line; the window
starts ``warmup`` seconds later on a whole second and lasts ``duration``
seconds (scenario 1b: at the jobs' start_date, their first fire, set a few
seconds after launch). Every run whose fire time falls inside the window is expected; the
jobs record their own start (bench/workload.py). CPU time is read from
/proc/PID/stat at both ends of the window, the peak RSS (VmHWM) after it; the
process is stopped ``drain`` seconds after the window so that late runs of
it are still seen.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from bench import querycount, systems
from bench.common import CLK_TCK, machine_cpu_busy, percentile, sleep_until
from bench.databases import Database
from bench.scenarios import Context

# Scenario 1b: seconds from launch to the jobs' start_date (every system is ready by then).
FIRST_FIRE_AFTER = 5

HISTORY_SQL = {
    "ours": "SELECT status, count(*) FROM scheduler_jobrun "
    "WHERE scheduled_at >= {p} AND scheduled_at < {p} GROUP BY status",
    "dja": "SELECT status, count(*) FROM django_apscheduler_djangojobexecution "
    "WHERE run_time >= {p} AND run_time < {p} GROUP BY status",
}


def observations(path, start: float, end: float) -> tuple[dict[tuple[int, int], float], int]:
    """First start per (job, fire time in µs) inside [start, end), and how many repeats."""
    seen: dict[tuple[int, int], float] = {}
    repeats = 0
    try:
        text = path.read_text()
    except FileNotFoundError:
        return seen, 0
    lo, hi = round(start * 1e6), round(end * 1e6)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        index, fire, began = int(parts[0]), round(float(parts[1]) * 1e6), float(parts[2])
        if not lo <= fire < hi:
            continue
        key = (index, fire)
        if key in seen:
            repeats += 1
            seen[key] = min(seen[key], began)
        else:
            seen[key] = began
    return seen, repeats


def history_rows(system: str, database: Database | None, start: float, end: float) -> dict:
    if system not in HISTORY_SQL or database is None:
        return {}
    p = "?" if database.kind == "sqlite" else "%s"
    rows = database.query(HISTORY_SQL[system].format(p=p), (database.ts(start), database.ts(end)))
    return {status: count for status, count in rows}


def recorded_start(
    database: Database, seen: dict[tuple[int, int], float], start: float, end: float
) -> dict[str, float | None]:
    """This project: how far each row's ``started_at`` is from the job's own first statement.

    The history must tell when a run really started (django-apscheduler records a
    late run as lasting longer than it did)."""
    p = "?" if database.kind == "sqlite" else "%s"
    rows = database.query(
        "SELECT job_id, scheduled_at, started_at FROM scheduler_jobrun "
        f"WHERE scheduled_at >= {p} AND scheduled_at < {p} AND started_at IS NOT NULL",
        (database.ts(start), database.ts(end)),
    )
    errors = []
    for job_id, scheduled, started in rows:
        began = seen.get((int(job_id.rsplit(".", 1)[1]), round(_epoch(scheduled) * 1e6)))
        if began is not None:
            errors.append(abs(began - _epoch(started)) * 1000)
    return {"start_error_p99_ms": percentile(errors, 99)}


def _epoch(value) -> float:
    if isinstance(value, str):  # SQLite: naive UTC text
        value = datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.timestamp()


def run_window(
    ctx: Context,
    system: str,
    database: Database | None,
    scenario: str,
    jobs: int,
    duration: int,
    count_queries: bool = False,
) -> dict[str, Any]:
    args = ctx.args
    tag = ctx.tag(scenario, system, database.kind if database else "memory")
    obs = ctx.workdir / f"{tag}.obs"
    qpath = ctx.workdir / f"{tag}.queries" if count_queries and system != "floor" else None
    extra: dict[str, Any] = dict(
        BENCH_SCENARIO=scenario, BENCH_JOBS=jobs, BENCH_OBS=obs, BENCH_WORK=args.work
    )
    if qpath is not None:
        extra["BENCH_QUERY_COUNT"] = qpath
    first: float | None = None
    if scenario == "accuracy_first":
        # The jobs' start_date: the window opens on their first fire, which is measured.
        first = math.ceil(time.time()) + FIRST_FIRE_AFTER
        extra["BENCH_START"] = int(first)
    proc = systems.start(system, database, ctx.workdir / f"{tag}.log", **extra)
    try:
        ready = proc.wait_line(systems.READY[system], args.start_timeout)
        w0 = first if first is not None else math.ceil(time.time()) + args.warmup
        w1 = w0 + duration
        sleep_until(w0)
        cpu0, busy0, q0 = proc.cpu(), machine_cpu_busy(), querycount.read(qpath) if qpath else None
        sleep_until(w1)
        cpu1, busy1, q1 = proc.cpu(), machine_cpu_busy(), querycount.read(qpath) if qpath else None
        sleep_until(w1 + args.drain)
        rss = proc.peak_rss()
        alive = proc.popen.poll() is None
        if not alive:
            cpu0 = cpu1 = None  # a process that died has no CPU figure worth comparing
    finally:
        proc.stop()
    seen, repeats = observations(obs, w0, w1)
    lateness = [(began - fire / 1e6) * 1000 for (_, fire), began in seen.items()]
    expected = jobs * duration
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    machine_busy = busy1[0] - busy0[0]
    machine_total = busy1[1] - busy0[1]
    history = history_rows(system, database, w0, w1)
    per_job: dict[int, int] = defaultdict(int)
    for index, _ in seen:
        per_job[index] += 1
    metrics: dict[str, Any] = {
        "ready_s": ready,
        "expected": expected,
        "seen": len(seen),
        "missed": expected - len(seen),
        "seen_pct": 100 * len(seen) / expected if expected else None,
        "repeats": repeats,
        "late_p50_ms": percentile(lateness, 50),
        "late_p99_ms": percentile(lateness, 99),
        "late_max_ms": max(lateness) if lateness else None,
        "cpu_s": cpu,
        "cpu_ms_per_run": cpu * 1000 / len(seen) if cpu is not None and seen else None,
        "peak_rss_mb": rss,
        "history_rows": sum(history.values()) if history else None,
        "queries_per_run": (q1 - q0) / len(seen)
        if q0 is not None and q1 is not None and seen
        else None,
        "db_locked_lines": proc.count("database is locked"),
        "tracebacks": proc.count("Traceback"),
        # Share of the machine's CPU that the system itself did not use: noise.
        "other_cpu_pct": 100 * (machine_busy - (cpu or 0) * CLK_TCK) / machine_total
        if machine_total
        else None,
        "starved_jobs": sum(1 for i in range(jobs) if per_job.get(i, 0) == 0),
        "died": 0 if alive else 1,
    }
    if history:
        metrics["history_by_status"] = history
    if system == "ours" and database is not None:
        metrics.update(recorded_start(database, seen, w0, w1))
    if not alive:
        metrics["died_with"] = proc.tail(3)
    return metrics


def run_scenario(
    ctx: Context,
    scenario: str,
    jobs: int,
    duration: int,
    collector,
    ratios,
    count_queries: bool = False,
) -> None:
    """Every repeat: the floor once, then per database both database-backed systems."""
    for repeat in range(ctx.args.repeat):
        ctx.log(f"{scenario}: repeat {repeat + 1}/{ctx.args.repeat}: floor")
        floor = run_window(ctx, "floor", None, scenario, jobs, duration)
        for kind, backend in ctx.backends.items():
            results = {"floor": floor}
            # Alternate the order, so a drift in the machine's load hits both alike.
            order = ("dja", "ours") if repeat % 2 == 0 else ("ours", "dja")
            for system in order:
                ctx.log(f"{scenario}: repeat {repeat + 1}/{ctx.args.repeat}: {system} on {kind}")
                database = backend.fresh(system, scenario)
                try:
                    results[system] = run_window(
                        ctx, system, database, scenario, jobs, duration, count_queries
                    )
                finally:
                    backend.drop(database)
            for system, metrics in results.items():
                collector.add(kind, system, metrics)
            collector.add_ratios(kind, ratios, results)
