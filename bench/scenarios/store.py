"""Scenario 3, scale of the store: 10,000 registered daily cron jobs.

Each job has its own id and a daily schedule ("M H * * *", spread over 20 hours
that never include the current or the next hour, so nothing falls due while
measuring): 1,200 distinct schedules, which caches shared between jobs fold.
Scenarios 3b-3d (below) take every job with its own schedule, and 100,000 jobs.
Measured:

* time from process start (just before exec) to the ready line: this project's
  "Active scheduler now" (lease held, store synced), the others' scheduler-started
  event (every ``add_job`` done); on a first start (empty store) and on a
  restart on the same database after SIGTERM. For this project, the time to
  its "Scheduler started" line (imports, settings, job registry; before it
  takes the lease and syncs the store) is shown too;
* peak RSS (VmHWM) and CPU seconds at the ready line;
* one scheduler wake-up with nothing due: ``scheduler._process_jobs()`` timed
  in a separate process on the store the scheduler left behind (median of
  30 calls after 3 warm-ups);
* scenario 3 only: the SQL statements a second the restarted scheduler sends
  while nothing is due (``IDLE_SECONDS`` from a second after its ready line;
  every statement through Django counted, bench/querycount.py): polling for
  admin requests, lease renewals and heartbeats.
"""

from __future__ import annotations

import time
import types
from datetime import UTC, datetime
from typing import Any

from bench import querycount, systems
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
    Metric("idle_statements_per_s", "SQL statements a second, idle", "", 2, ("dja", "ours")),
]
# Seconds of the idle window after the restart (scenario 3 only).
IDLE_SECONDS = 20
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
    return {"jobs": args.store_jobs, "shape": "few"}


def _start(
    ctx: Context, system: str, database: Database | None, env: dict, idle: float = 0
) -> dict[str, Any]:
    tag = ctx.tag("store", system, database.kind if database else "memory")
    counted = ctx.workdir / f"{tag}.queries" if idle and database is not None else None
    if counted is not None:
        env = {**env, "BENCH_QUERY_COUNT": counted}
    proc = systems.start(system, database, ctx.workdir / f"{tag}.log", **env)
    idle_rate = None
    try:
        ready = proc.wait_line(systems.READY[system], ctx.args.store_timeout)
        up = proc.wait_line(systems.UP[system], 1) if system in systems.UP else None
        cpu = proc.cpu()
        time.sleep(0.5)
        rss = proc.peak_rss()
        if counted is not None:
            time.sleep(0.5)
            q0, t0 = querycount.read(counted), time.monotonic()
            time.sleep(idle)
            q1, t1 = querycount.read(counted), time.monotonic()
            if q0 is not None and q1 is not None:
                idle_rate = (q1 - q0) / (t1 - t0)
    finally:
        proc.stop()
    return {"ready_s": ready, "up_s": up, "cpu_s": cpu, "rss_mb": rss, "idle": idle_rate}


def measure(
    ctx: Context,
    system: str,
    database: Database | None,
    jobs: int,
    shape: str = "few",
    idle: float = 0,
) -> dict[str, Any]:
    env = {
        "BENCH_SCENARIO": "store",
        "BENCH_JOBS": jobs,
        "BENCH_HOUR0": ctx.store_hour0,
        "BENCH_SHAPE": shape,
    }
    first = _start(ctx, system, database, env)
    second = _start(ctx, system, database, env, idle)
    tag = ctx.tag("store", "wakeup", system, database.kind if database else "memory")
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
        "idle_statements_per_s": second["idle"],
    }


def run(ctx: Context) -> dict[str, Any]:
    return _run(ctx, NAME, params(ctx.args), RATIOS, ("dja", "ours"))


def _run(
    ctx: Context, name: str, p: dict[str, Any], ratios: list[Ratio], systems_: tuple[str, ...]
) -> dict[str, Any]:
    # Daily schedules start two hours from now, so none falls due while measuring.
    ctx.store_hour0 = (datetime.now(UTC).hour + 2) % 24
    collector = Collector()
    for repeat in range(ctx.args.repeat):
        ctx.log(f"{name}: repeat {repeat + 1}/{ctx.args.repeat}: floor")
        floor = measure(ctx, "floor", None, p["jobs"], p["shape"])
        for kind, backend in ctx.backends.items():
            results = {"floor": floor}
            order = systems_ if repeat % 2 == 0 else systems_[::-1]
            for system in order:
                ctx.log(f"{name}: repeat {repeat + 1}/{ctx.args.repeat}: {system} on {kind}")
                database = backend.fresh(system, "store")
                try:
                    idle = (2 if ctx.args.smoke else IDLE_SECONDS) if name == NAME else 0
                    results[system] = measure(ctx, system, database, p["jobs"], p["shape"], idle)
                finally:
                    backend.drop(database)
            for system, metrics in results.items():
                collector.add(kind, system, metrics)
            collector.add_ratios(kind, ratios, results)
    return {"params": p, **collector.summary()}


# -- 3b-3d: every schedule distinct, and 100,000 jobs -----------------------------------

DISTINCT_DOC = """Every job has its own schedule: a distinct second, minute and hour ("S M H * * *",
in the same 20 hours as scenario 3), so no trigger or fire time is shared between two
jobs; past 72,000 jobs (every second of those 20 hours taken) each further 72,000 get
a day-of-week restriction of their own ("mon-fri", ...), so every job still differs.
Measured as scenario 3."""

FEW_DOC = """The schedules of scenario 3 ("M H * * *", 1,200 distinct ones), for {jobs} jobs.
Measured as scenario 3."""

LARGE_DJA_NOTE = """

django-apscheduler is not run at this size unless ``--large-dja`` is given: its
``add_job`` takes one query or more per job, about 17 s for a first start and 30-40 s
for a restart at 10,000 jobs, so each of its starts would take minutes here; the floor
and this project are."""


def _variant(
    name: str, title: str, shape: str, large: bool, doc: str, targets: list[Target]
) -> types.ModuleType:
    """A scenario module: scenario 3's measurements for another size or shape of the store."""
    module = types.ModuleType(f"{__name__}.{name}", f"{title}.\n\n{doc}")
    summary = "{jobs} daily cron jobs, " + (
        "every one its own schedule" if shape == "distinct" else "1,200 distinct schedules"
    )
    ratios = [
        *RATIOS[:3],
        Ratio("first_start_s", "ours", "floor"),
        Ratio("restart_s", "ours", "floor"),
    ]

    def variant_params(args) -> dict[str, Any]:
        jobs = args.store_large_jobs if large else args.store_jobs
        with_dja = not large or args.large_dja
        return {"jobs": jobs, "shape": shape, "dja": "run" if with_dja else "not run"}

    def variant_run(ctx: Context) -> dict[str, Any]:
        p = variant_params(ctx.args)
        systems_ = ("dja", "ours") if p["dja"] == "run" else ("ours",)
        return _run(ctx, name, p, ratios, systems_)

    module.__dict__.update(
        NAME=name,
        TITLE=title,
        SUMMARY=summary + ("; django-apscheduler {dja}" if large else ""),
        METRICS=[m for m in METRICS if m.key != "idle_statements_per_s"],  # scenario 3's
        RATIOS=ratios,
        TARGETS=targets,
        params=variant_params,
        run=variant_run,
    )
    if large:
        module.__doc__ += LARGE_DJA_NOTE
    return module


# 10,000 jobs as in scenario 3, and its targets; 100,000 jobs: first start <= 10 s,
# restart <= 2 s, peak RSS <= 250 MB, a wake-up <= 5 ms.
LARGE_TARGETS = [
    Target("first start of 100,000 jobs", "first_start_s", "<=", 10, unit="s"),
    Target("restart", "restart_s", "<=", 2, unit="s"),
    Target("peak RSS", "peak_rss_mb", "<=", 250, unit="MB"),
    Target("one wake-up", "wakeup_ms", "<=", 5, unit="ms"),
]
distinct = _variant(
    "store_distinct",
    "3b. Scale of the store, every schedule distinct",
    "distinct",
    False,
    DISTINCT_DOC,
    TARGETS,
)
large = _variant(
    "store_large",
    "3c. Scale of the store, ten times the jobs",
    "few",
    True,
    FEW_DOC.format(jobs="100,000"),
    LARGE_TARGETS,
)
large_distinct = _variant(
    "store_large_distinct",
    "3d. Scale of the store, ten times the jobs, every schedule distinct",
    "distinct",
    True,
    DISTINCT_DOC,
    LARGE_TARGETS,
)
VARIANTS = (distinct, large, large_distinct)
