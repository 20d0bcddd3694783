"""Scenario 6, runs in a child process: what ``isolation="process"`` costs a run.

In a separate process (``python -m bench.probe isolation``), this project only (plain
APScheduler and django-apscheduler have no per-run process): the time from asking for
a run of a no-op job to its outcome, in a worker thread's way (``body.run_here``)
and in a child forked from the fork server (``isolation.Isolation.run``), ``--history-runs``
runs each after 5 warm-ups; and the fork server's resident memory, which each child
shares copy-on-write at its start.
"""

from __future__ import annotations

from typing import Any

from bench import systems
from bench.common import run_probe
from bench.scenarios import Collector, Context, Metric, Target

NAME = "isolation"
TITLE = "6. Runs in a child process"
SUMMARY = "a no-op job, {runs:,} runs in a thread and in a child process"

OURS = ("ours",)
METRICS = [
    Metric("thread_p50_ms", "in a thread, p50", "ms", 3, OURS),
    Metric("thread_p99_ms", "in a thread, p99", "ms", 3, OURS),
    Metric("process_p50_ms", "in a child process, p50", "ms", 2, OURS),
    Metric("process_p99_ms", "in a child process, p99", "ms", 2, OURS),
    Metric("overhead_p99_ms", "start overhead of a child, p99", "ms", 2, OURS),
    Metric("server_rss_mb", "fork server's RSS", "MB", 1, OURS),
]
RATIOS: list[Any] = []
TARGETS = [Target("start overhead of a child, p99", "overhead_p99_ms", "<=", 20, unit="ms")]


def params(args) -> dict[str, Any]:
    return {"runs": args.history_runs}


def run(ctx: Context) -> dict[str, Any]:
    p = params(ctx.args)
    collector = Collector()
    for repeat in range(ctx.args.repeat):
        for kind, backend in ctx.backends.items():
            ctx.log(f"{NAME}: repeat {repeat + 1}/{ctx.args.repeat}: ours on {kind}")
            database = backend.fresh("ours", NAME)
            try:
                tag = ctx.tag(NAME, "ours", kind)
                result = run_probe(
                    "isolation",
                    ["--system", "ours", "--runs", str(p["runs"])],
                    systems.env_for("ours", database, BENCH_SCENARIO=NAME),
                    600,
                    ctx.workdir / f"{tag}.log",
                )
            finally:
                backend.drop(database)
            collector.add(kind, "ours", {m.key: result.get(m.key) for m in METRICS})
    return {"params": p, **collector.summary()}
