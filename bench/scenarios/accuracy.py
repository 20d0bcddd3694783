"""Scenario 1, firing accuracy: 20 cron jobs every second for 30 s.

Each run records ``time.time()`` as its first statement and the fire time it
serves; lateness = start - fire time. Runs seen = distinct (job, fire time)
inside the window; expected = jobs x seconds.
"""

from __future__ import annotations

import types
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
    return _run(ctx, NAME)


def _run(ctx: Context, name: str) -> dict[str, Any]:
    p = params(ctx.args)
    collector = Collector()
    run_scenario(ctx, name, p["jobs"], p["duration"], collector, RATIOS)
    return {"params": p, **collector.summary()}


FIRST_DOC = """The shape of an independent harness that measured a longer tail than scenario 1:
each job has a ``start_date`` (a whole second a few seconds after launch), ``timezone="UTC"``
and keyword arguments, all on one shared function; the window opens on the first fire
instead of after a warm-up, so the first second (cold worker threads, jobs built for the
first time, the first claims) is measured with the rest."""

FIRST_TITLE = "1b. Firing accuracy from the first fire"
first = types.ModuleType(f"{__name__}.first", f"{FIRST_TITLE}.\n\n{FIRST_DOC}")
first.__dict__.update(
    NAME="accuracy_first",
    TITLE=FIRST_TITLE,
    SUMMARY="{jobs} cron jobs every second from their start_date, for {duration} s; "
    "the first fire measured",
    METRICS=METRICS,
    RATIOS=RATIOS,
    TARGETS=TARGETS,
    params=params,
    run=lambda ctx: _run(ctx, "accuracy_first"),
)
VARIANTS = (first,)
