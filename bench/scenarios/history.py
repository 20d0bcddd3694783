"""Scenario 5, the cost of writing history, per run of a no-op job.

In a separate process (``python -m bench.probe history``):

* this project: ``scheduler.runner.Runner().run_scheduled(job, [run_time])`` with the
  APScheduler job built by ``scheduler.sync.first_job``, as a worker thread runs it;
* django-apscheduler: what its scheduler does for one run: the submission event
  (dispatched to its listener), APScheduler's ``run_job``, the execution event;
* plain APScheduler: the same without listeners.

Counted for one run: SQL statements through Django (``CaptureQueriesContext``),
and statements that reach the database, transaction control and health-check
pings included (PostgreSQL: pg_stat_statements, i.e. round trips; SQLite: the
sqlite3 trace callback), averaged over 50 runs. Overhead = time per run
through the system minus time of calling the function directly, over
``--history-runs`` runs. For this project also the CPU per run of the two
writes alone, grouped as under the load scenario (one claim INSERT and one
outcome write for 20 runs each): the part of scenario 2's CPU that the
history costs, which the floor does not pay.
"""

from __future__ import annotations

from typing import Any

from bench import systems
from bench.common import run_probe
from bench.scenarios import Collector, Context, Metric, Ratio, Target

NAME = "history"
TITLE = "5. History write cost"
SUMMARY = "per run of a no-op job, {runs:,} runs"

OURS = ("ours",)
KEYS = ("queries_per_run", "statements_per_run", "overhead_us", "direct_us", "grouped_cpu_us")
METRICS = [
    Metric("queries_per_run", "SQL statements per run (Django)", "", 1),
    Metric("statements_per_run", "DB round trips per run", "", 1),
    Metric("overhead_us", "overhead per run", "µs", 0),
    Metric("direct_us", "the job called directly", "µs", 1),
    Metric(
        "grouped_cpu_us", "CPU per run of its claim and outcome, 20 a write", "µs", 1, ("ours",)
    ),
]
RATIOS = [
    Ratio("overhead_us", "ours", "dja"),
    Ratio("overhead_us", "ours", "floor"),
]
TARGETS = [
    Target("DB round trips per run for history", "statements_per_run", "<=", 2),
]


def params(args) -> dict[str, Any]:
    return {"runs": args.history_runs}


def _probe(ctx: Context, system: str, database, runs: int) -> dict[str, Any]:
    tag = ctx.tag(NAME, system, database.kind if database else "memory")
    result = run_probe(
        "history",
        ["--system", system, "--runs", str(runs)],
        systems.env_for(system, database, BENCH_SCENARIO=NAME),
        600,
        ctx.workdir / f"{tag}.log",
    )
    metrics = {
        k: result.get(k)
        for k in (
            "queries_per_run",
            "statements_per_run",
            "overhead_us",
            "direct_us",
            "grouped_cpu_us",
        )
    }
    if result.get("sql"):
        metrics["sql"] = result["sql"]
        metrics["statements_source"] = result.get("statements_source")
        if result.get("server_statements"):
            metrics["server_statements"] = result["server_statements"]
    return metrics


def run(ctx: Context) -> dict[str, Any]:
    p = params(ctx.args)
    collector = Collector()
    for repeat in range(ctx.args.repeat):
        ctx.log(f"{NAME}: repeat {repeat + 1}/{ctx.args.repeat}: floor")
        floor = _probe(ctx, "floor", None, p["runs"])
        for kind, backend in ctx.backends.items():
            results = {"floor": floor}
            for system in ("dja", "ours"):
                ctx.log(f"{NAME}: repeat {repeat + 1}/{ctx.args.repeat}: {system} on {kind}")
                database = backend.fresh(system, NAME)
                try:
                    results[system] = _probe(ctx, system, database, p["runs"])
                finally:
                    backend.drop(database)
            for system, metrics in results.items():
                collector.add(kind, system, metrics)
            collector.add_ratios(kind, RATIOS, results)
    return {"params": p, **collector.summary()}
