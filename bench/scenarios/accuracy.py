"""Scenario 1, firing accuracy: 20 cron jobs every second for 30 s.

Each run records ``time.time()`` as its first statement and the fire time it
serves; lateness = start - fire time. Runs seen = distinct (job, fire time)
inside the window; expected = jobs x seconds.
"""

from __future__ import annotations

from typing import Any

from bench.scenarios import Collector, Context, Metric, Ratio, Target
from bench.scenarios.window import run_scenario

NAME = "accuracy"
TITLE = "1. Firing accuracy"
SUMMARY = "{jobs} cron jobs every second for {duration} s; lateness of each run's start"

METRICS = [
    Metric("seen", "runs seen", "", 0),
    Metric("expected", "runs expected", "", 0),
    Metric("late_p50_ms", "lateness p50", "ms", 1),
    Metric("late_p99_ms", "lateness p99", "ms", 1),
    Metric("late_max_ms", "lateness max", "ms", 1),
    Metric(
        "start_error_p99_ms",
        "  recorded start vs the job's first statement, p99",
        "ms",
        2,
        ("ours",),
    ),
    Metric("repeats", "runs seen twice", "", 0),
    Metric("history_rows", "history rows in window", "", 0, ("dja", "ours")),
    Metric("db_locked_lines", "'database is locked' log lines", "", 0, ("dja", "ours")),
    Metric("died", "scheduler process died", "", 0),
    Metric("other_cpu_pct", "other load on the machine", "%", 0),
]
RATIOS = [
    Ratio("late_p99_ms", "ours", "floor"),
    Ratio("late_p99_ms", "ours", "dja"),
    Ratio("late_p99_ms", "dja", "floor"),
]
TARGETS = [
    Target("every expected run seen", "seen", ">=", limit_key="expected"),
    Target("lateness p99", "late_p99_ms", "<=", 15, unit="ms"),
]


def params(args) -> dict[str, Any]:
    return {"jobs": args.accuracy_jobs, "duration": args.duration}


def run(ctx: Context) -> dict[str, Any]:
    p = params(ctx.args)
    collector = Collector()
    run_scenario(ctx, NAME, p["jobs"], p["duration"], collector, RATIOS)
    return {"params": p, **collector.summary()}
