"""Scenario 2, load: 200 interval jobs every second, ~1 ms of work each, for 30 s.

The jobs' phases are spread evenly over the second. Runs completed inside the
window vs expected; missed = expected - completed; lateness p99; the
scheduler process's CPU seconds during the window (utime + stime of all its
threads, /proc/PID/stat); peak RSS (VmHWM); history rows written for the
window's fire times; SQL statements per run, all of the process's (an execute
wrapper counts them).
"""

from __future__ import annotations

from typing import Any

from bench.scenarios import Collector, Context, Metric, Ratio, Target
from bench.scenarios.window import run_scenario

NAME = "load"
TITLE = "2. Load"
SUMMARY = "{jobs} interval jobs every second, ~1 ms of work each ({work}), for {duration} s"

METRICS = [
    Metric("seen", "runs completed", "", 0),
    Metric("expected", "runs expected", "", 0),
    Metric("missed", "runs missed", "", 0),
    Metric("late_p99_ms", "lateness p99", "ms", 1),
    Metric("cpu_s", "scheduler CPU in window", "s", 2),
    Metric("cpu_ms_per_run", "CPU per run", "ms", 3),
    Metric("peak_rss_mb", "peak RSS", "MB", 1),
    Metric("history_rows", "history rows written", "", 0, ("dja", "ours")),
    Metric("queries_per_run", "SQL statements per run (all)", "", 2, ("dja", "ours")),
    Metric("db_locked_lines", "'database is locked' log lines", "", 0, ("dja", "ours")),
    Metric("died", "scheduler process died", "", 0),
    Metric("other_cpu_pct", "other load on the machine", "%", 0),
]
RATIOS = [
    Ratio("cpu_s", "ours", "floor"),
    Ratio("cpu_s", "dja", "floor"),
    Ratio("cpu_s", "ours", "dja"),
]
TARGETS = [
    Target("zero missed runs", "missed", "<=", 0),
    Target(
        "scheduler CPU vs the in-memory floor", "cpu_s:ours/floor", "<=", 2, unit="×", ratio=True
    ),
    Target(
        "DB round trips per run for history (scenario 5)",
        "statements_per_run",
        "<=",
        2,
        scenario="history",
    ),
]


def params(args) -> dict[str, Any]:
    return {"jobs": args.load_jobs, "duration": args.duration, "work": args.work}


def run(ctx: Context) -> dict[str, Any]:
    p = params(ctx.args)
    collector = Collector()
    run_scenario(ctx, NAME, p["jobs"], p["duration"], collector, RATIOS, count_queries=True)
    return {"params": p, **collector.summary()}
