"""Fill a history table with N rows in one statement, straight in SQL.

Rows are spread evenly over the last 30 days across 200 jobs (``bench.job.000``
to ``bench.job.199``), with realistic statuses: 95 % succeeded, 3 % failed, 1 %
missed, 1 % skipped (django-apscheduler: Executed / Error! / Missed! / Max
instances!); one run in a thousand is manual. The jobs themselves are inserted
too (this project's catalog, django-apscheduler's ``DjangoJob``, which its
history references).

SQLite: a recursive CTE; PostgreSQL: generate_series, then ANALYZE (what
autovacuum does soon after a bulk insert; SQLite gets no ANALYZE, as Django
never runs one).
"""

from __future__ import annotations

import time

from bench.databases import Database

JOBS = 200
SPAN = 30 * 86400


def _series(database: Database, rows: int) -> tuple[str, str]:
    """(prefix, FROM clause) producing x = 0 .. rows-1."""
    if database.kind == "sqlite":
        return (
            "WITH RECURSIVE s(x) AS "
            f"(SELECT 0 UNION ALL SELECT x + 1 FROM s WHERE x < {rows - 1}) ",
            "FROM s",
        )
    return "", f"FROM generate_series(0, {rows - 1}) AS s(x)"


def _sql(database: Database) -> dict[str, str]:
    if database.kind == "sqlite":
        return {
            "job": "'bench.job.' || printf('%03d', x % 200)",
            "at": "strftime('%Y-%m-%d %H:%M:%f', {start} + x * {step}, 'unixepoch')",
            "plus": "strftime('%Y-%m-%d %H:%M:%f', {start} + x * {step} + {delta}, 'unixepoch')",
            "now": "strftime('%Y-%m-%d %H:%M:%f', 'now')",
            "true": "1",
            "false": "0",
        }
    return {
        "job": "'bench.job.' || lpad((x % 200)::text, 3, '0')",
        "at": "to_timestamp({start} + x * {step})",
        "plus": "to_timestamp({start} + x * {step} + {delta})",
        "now": "now()",
        "true": "true",
        "false": "false",
    }


def seed(database: Database, system: str, rows: int) -> float:
    """Insert the jobs and ``rows`` history rows; returns the seconds it took."""
    start_epoch = time.time() - SPAN
    step = SPAN / rows
    sql = _sql(database)
    at = sql["at"].format(start=start_epoch, step=step)
    prefix, source = _series(database, rows)
    jobs_prefix, jobs_source = _series(database, JOBS)
    status = (
        "CASE WHEN x % 100 < 95 THEN '{0}' WHEN x % 100 < 98 THEN '{1}' "
        "WHEN x % 100 < 99 THEN '{2}' ELSE '{3}' END"
    )
    t0 = time.perf_counter()
    connection = database.connect()
    try:
        if database.kind == "sqlite":
            # A big page cache for this connection only: index updates stop thrashing.
            connection.execute("PRAGMA cache_size = -500000")
            connection.execute("BEGIN")
        if system == "ours":
            connection.execute(
                f"{jobs_prefix}INSERT INTO scheduler_job (id, name, func, kind, schedule, "
                "timezone, options, enabled, paused, pending_change, fingerprint, synced_at) "
                f"SELECT {sql['job']}, 'Bench job ' || x, 'bench.workload:noop', 'cron', "
                f"'*/5 * * * *', 'UTC', '{{}}', {sql['true']}, {sql['false']}, {sql['false']}, "
                f"'', {sql['now']} {jobs_source}"
            )
            started = sql["plus"].format(start=start_epoch, step=step, delta=0.004)
            finished = sql["plus"].format(start=start_epoch, step=step, delta=0.254)
            run_status = status.format("succeeded", "failed", "missed", "skipped")
            connection.execute(
                f'{prefix}INSERT INTO scheduler_jobrun (job_id, job_name, status, "trigger", '
                "scheduled_at, started_at, finished_at, duration, hostname, pid, instance, "
                "requested_by, exception, traceback, output) "
                f"SELECT {sql['job']}, 'Bench job ' || (x % 200), {run_status}, "
                "CASE WHEN x % 1000 = 999 THEN 'manual' ELSE 'schedule' END, "
                f"{at}, {started}, {finished}, 0.25, 'bench-host', 4242, '', '', "
                "CASE WHEN x % 100 BETWEEN 95 AND 97 "
                "THEN 'ConnectionError: partner API answered 503' ELSE '' END, "
                "'', 'synced 42 records' "
                f"{source}"
            )
        else:
            future = sql["plus"].format(start=time.time(), step=0, delta=3600)
            connection.execute(
                f"{jobs_prefix}INSERT INTO django_apscheduler_djangojob (id, next_run_time, "
                f"job_state) SELECT {sql['job']}, {future}, "
                f"{'x' if database.kind == 'sqlite' else ''}'00'"
                f"{'' if database.kind == 'sqlite' else '::bytea'} {jobs_source}"
            )
            run_status = status.format("Executed", "Error!", "Missed!", "Max instances!")
            finished_epoch = f"{start_epoch} + x * {step} + 0.25"
            connection.execute(
                f"{prefix}INSERT INTO django_apscheduler_djangojobexecution (job_id, status, "
                "run_time, duration, finished, exception, traceback) "
                f"SELECT {sql['job']}, {run_status}, {at}, 0.25, "
                f"round({finished_epoch}, 2), "
                "CASE WHEN x % 100 BETWEEN 95 AND 97 "
                "THEN 'partner API answered 503' ELSE NULL END, NULL "
                f"{source}"
            )
        if database.kind == "sqlite":
            connection.execute("COMMIT")
        else:
            connection.execute("ANALYZE")
    finally:
        connection.close()
    return time.perf_counter() - t0
