"""Scenario 3, scale of the store: 10,000 registered daily cron jobs.

Each job has its own id and a daily schedule ("M H * * *", spread over 20 hours
that never include the current or the next hour, so nothing falls due while
measuring). Measured:

* time from process start (just before exec) to the ready line: this project's
  "Active scheduler now" (lease held, store synced), the others' scheduler-started
  event (every ``add_job`` done); on a first start (empty store) and on a
  restart on the same database after SIGTERM. For this project, the time to
  its "Scheduler started" line (imports, settings, job registry; before it
  takes the lease and syncs the store) is shown too;
* peak RSS (VmHWM) and CPU seconds at the ready line;
* one scheduler wake-up with nothing due: ``scheduler._process_jobs()`` timed
  in a separate process on the store the scheduler left behind (median of
  30 calls after 3 warm-ups).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from bench import systems
from bench.common import run_probe
from bench.databases import Database
from bench.scenarios import Collector, Context, Metric, Ratio, Target

NAME = "store"
TITLE = "3. Scale of the store"
SUMMARY = "{jobs} registered daily cron jobs: start, restart, memory, one wake-up"

METRICS = [
    Metric("first_start_s", "first start to running", "s", 2),
    Metric("first_up_s", "  of which process up (imports, registry)", "s", 2, ("ours",)),
    Metric("restart_s", "restart to running", "s", 2),
    Metric("restart_up_s", "  of which process up", "s", 2, ("ours",)),
    Metric("first_cpu_s", "CPU of the first start", "s", 2),
    Metric("peak_rss_mb", "peak RSS", "MB", 1),
    Metric("wakeup_ms", "one wake-up, nothing due", "ms", 2),
    Metric("stored_jobs", "jobs in the store", "", 0),
]
RATIOS = [
    Ratio("first_start_s", "ours", "dja"),
    Ratio("restart_s", "ours", "dja"),
    Ratio("wakeup_ms", "ours", "dja"),
    Ratio("first_start_s", "ours", "floor"),
]
TARGETS = [
    Target("first start of 10,000 jobs", "first_start_s", "<=", 3, unit="s"),
    Target("restart", "restart_s", "<=", 1, unit="s"),
    Target("peak RSS", "peak_rss_mb", "<=", 100, unit="MB"),
    Target("one wake-up", "wakeup_ms", "<=", 5, unit="ms"),
]


def params(args) -> dict[str, Any]:
    return {"jobs": args.store_jobs}


def _start(ctx: Context, system: str, database: Database | None, env: dict) -> dict[str, Any]:
    tag = ctx.tag(NAME, system, database.kind if database else "memory")
    proc = systems.start(system, database, ctx.workdir / f"{tag}.log", **env)
    try:
        ready = proc.wait_line(systems.READY[system], ctx.args.store_timeout)
        up = proc.wait_line(systems.UP[system], 1) if system in systems.UP else None
        cpu = proc.cpu()
        time.sleep(0.5)
        rss = proc.peak_rss()
    finally:
        proc.stop()
    return {"ready_s": ready, "up_s": up, "cpu_s": cpu, "rss_mb": rss}


def measure(ctx: Context, system: str, database: Database | None, jobs: int) -> dict[str, Any]:
    env = {"BENCH_SCENARIO": NAME, "BENCH_JOBS": jobs, "BENCH_HOUR0": ctx.store_hour0}
    first = _start(ctx, system, database, env)
    second = _start(ctx, system, database, env)
    tag = ctx.tag(NAME, "wakeup", system, database.kind if database else "memory")
    probe = run_probe(
        "wakeup",
        ["--system", system],
        systems.env_for(system, database, **env),
        300,
        ctx.workdir / f"{tag}.log",
    )
    return {
        "first_start_s": first["ready_s"],
        "first_up_s": first["up_s"],
        "restart_s": second["ready_s"],
        "restart_up_s": second["up_s"],
        "first_cpu_s": first["cpu_s"],
        "peak_rss_mb": max(first["rss_mb"] or 0, second["rss_mb"] or 0) or None,
        "wakeup_ms": probe["wakeup_ms"],
        "stored_jobs": probe["stored_jobs"],
    }


def run(ctx: Context) -> dict[str, Any]:
    p = params(ctx.args)
    # Daily schedules start two hours from now, so none falls due while measuring.
    ctx.store_hour0 = (datetime.now(UTC).hour + 2) % 24
    collector = Collector()
    for repeat in range(ctx.args.repeat):
        ctx.log(f"{NAME}: repeat {repeat + 1}/{ctx.args.repeat}: floor")
        floor = measure(ctx, "floor", None, p["jobs"])
        for kind, backend in ctx.backends.items():
            results = {"floor": floor}
            order = ("dja", "ours") if repeat % 2 == 0 else ("ours", "dja")
            for system in order:
                ctx.log(f"{NAME}: repeat {repeat + 1}/{ctx.args.repeat}: {system} on {kind}")
                database = backend.fresh(system, NAME)
                try:
                    results[system] = measure(ctx, system, database, p["jobs"])
                finally:
                    backend.drop(database)
            for system, metrics in results.items():
                collector.add(kind, system, metrics)
            collector.add_ratios(kind, RATIOS, results)
    return {"params": p, **collector.summary()}
