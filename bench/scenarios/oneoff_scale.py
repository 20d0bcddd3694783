"""Scenario 8b, a million one-off runs waiting: what they cost each wake-up and the dashboard.

This project only. In a separate process (``python -m bench.oneoff_probe scale``): runs
of a job scheduled from code (trigger ``code``, status ``queued``, its arguments) fill
the table in one INSERT, due from 10 minutes on and spread over the next 10 days
(PostgreSQL then gets an ANALYZE, as autovacuum would give it soon; SQLite none, as
Django never runs one). Then the median over 50 calls (after one) of the statements
the control thread runs: ``Control.requests_pending`` (every poll: a pause to apply,
a run due, when the next one is due) and ``Control._due_batch`` (each look at the
queue: the due runs, none here), and of the dashboard's ``stats.queued_by_trigger``
(bounded counts of waiting runs) and ``stats.next_queued`` (the next ten); and the
median of 5 requests (after one) of the admin pages that show waiting runs (the
dashboard, the runs list, the runs list filtered to queued), as a logged-in superuser
through Django's test client, as scenario 4 times them.
"""

from __future__ import annotations

from typing import Any

from bench.databases import project_env
from bench.scenarios import Collector, Context, Metric, Target
from bench.scenarios.oneoff import PROJECT, _probe

NAME = "oneoff_scale"
TITLE = "8b. One-off runs waiting"
SUMMARY = "{waiting:,} runs scheduled from code waiting in the table"

OURS = ("ours",)
METRICS = [
    Metric("pending_ms", "control thread, every poll (requests_pending)", "ms", 2, OURS),
    Metric("due_batch_ms", "control thread, each look at the queue (_due_batch)", "ms", 2, OURS),
    Metric("queued_by_trigger_ms", "dashboard: waiting runs by trigger", "ms", 2, OURS),
    Metric("next_queued_ms", "dashboard: the next runs from code", "ms", 2, OURS),
    Metric("dashboard_page_ms", "admin: scheduler dashboard page", "ms", 1, OURS),
    Metric("list_page_ms", "admin: runs list, first page", "ms", 1, OURS),
    Metric("queued_list_page_ms", "admin: runs list, filtered to queued", "ms", 1, OURS),
    Metric("fill_s", "filling the table (one INSERT) took", "s", 1, OURS),
]
RATIOS: list[Any] = []
TARGETS = [
    Target("control thread's statement every poll", "pending_ms", "<=", 5, unit="ms"),
    Target("control thread's look at the queue", "due_batch_ms", "<=", 5, unit="ms"),
    # Scenario 4's limits for the same pages, with a million runs finished instead.
    Target("dashboard page, runs waiting", "dashboard_page_ms", "<=", 100, unit="ms"),
    Target("runs list, runs waiting", "list_page_ms", "<=", 250, unit="ms"),
    Target("queued runs list, runs waiting", "queued_list_page_ms", "<=", 250, unit="ms"),
]


def params(args) -> dict[str, Any]:
    return {"waiting": args.oneoff_waiting}


def run(ctx: Context) -> dict[str, Any]:
    p = params(ctx.args)
    collector = Collector()
    for kind, backend in ctx.backends.items():
        database = backend.fresh(PROJECT, NAME)
        try:
            for repeat in range(ctx.args.repeat):
                # The rows are written once per database; each repeat times them again.
                fill = p["waiting"] if repeat == 0 else 0
                ctx.log(
                    f"{NAME}: repeat {repeat + 1}/{ctx.args.repeat} on {kind}"
                    + (f" (filling {fill:,} rows)" if fill else "")
                )
                result = _probe(
                    ["scale", "--runs", str(p["waiting"]), "--fill", str(fill)],
                    project_env(PROJECT, database.url),
                    ctx.workdir / f"{ctx.tag(NAME, kind)}.log",
                )
                if not fill:
                    result.pop("fill_s", None)
                collector.add(kind, "ours", {m.key: result.get(m.key) for m in METRICS})
        finally:
            backend.drop(database)
    return {"params": p, **collector.summary()}
