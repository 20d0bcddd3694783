"""Scenario 4, the admin at scale: the run-history list (and our dashboard) with 1,000,000 rows.

The history table is filled straight in SQL (bench/seed.py), then a separate
process (``python -m bench.probe admin``) logs a superuser in with Django's test
client and requests each page: the first page of the list, the list filtered
by status (failed), and by job. One warm-up request per page, then the median
of ``--requests`` requests; the whole probe runs ``--repeat`` times. Same for
django-apscheduler's DjangoJobExecution admin list. Plain APScheduler has no
admin.
"""

from __future__ import annotations

from typing import Any

from bench import systems
from bench.common import run_probe
from bench.scenarios import Collector, Context, Metric, Ratio, Target
from bench.seed import seed

NAME = "admin"
TITLE = "4. Admin at scale"
SUMMARY = "run-history admin list with {rows:,} rows, as a logged-in superuser"

PAGES = ("list", "by_status", "by_job")
METRICS = [
    Metric("list_ms", "first page of the list", "ms", 1, ("dja", "ours")),
    Metric("by_status_ms", "filtered by status", "ms", 1, ("dja", "ours")),
    Metric("by_job_ms", "filtered by job", "ms", 1, ("dja", "ours")),
    Metric("slowest_page_ms", "slowest page", "ms", 1, ("dja", "ours")),
    Metric("dashboard_ms", "scheduler dashboard", "ms", 1, ("ours",)),
    Metric("list_queries", "SQL queries of the list page", "", 0, ("dja", "ours")),
    Metric("by_status_queries", "SQL queries, filtered by status", "", 0, ("dja", "ours")),
    Metric("by_job_queries", "SQL queries, filtered by job", "", 0, ("dja", "ours")),
    Metric("dashboard_queries", "SQL queries of the dashboard", "", 0, ("ours",)),
    Metric("seed_s", "seeding the rows took", "s", 1, ("dja", "ours")),
]
RATIOS = [Ratio(f"{page}_ms", "ours", "dja") for page in PAGES]
TARGETS = [
    Target("first page of the runs list", "list_ms", "<=", 250, unit="ms"),
    Target("runs list filtered by status", "by_status_ms", "<=", 250, unit="ms"),
    Target("runs list filtered by job", "by_job_ms", "<=", 250, unit="ms"),
    Target("scheduler dashboard", "dashboard_ms", "<=", 100, unit="ms"),
]


def params(args) -> dict[str, Any]:
    return {"rows": args.admin_rows, "requests": args.requests}


def run(ctx: Context) -> dict[str, Any]:
    p = params(ctx.args)
    collector = Collector()
    for kind, backend in ctx.backends.items():
        for system in ("dja", "ours"):
            database = backend.fresh(system, NAME)
            try:
                ctx.log(f"{NAME}: seeding {p['rows']:,} rows for {system} on {kind}")
                seconds = seed(database, system, p["rows"])
                for repeat in range(ctx.args.repeat):
                    ctx.log(f"{NAME}: repeat {repeat + 1}/{ctx.args.repeat}: {system} on {kind}")
                    tag = ctx.tag(NAME, system, kind)
                    probe = run_probe(
                        "admin",
                        ["--system", system, "--requests", str(p["requests"])],
                        systems.env_for(system, database),
                        600,
                        ctx.workdir / f"{tag}.log",
                    )
                    pages = probe["pages"]
                    metrics: dict[str, Any] = {
                        f"{page}_ms": pages[page]["median_ms"] for page in PAGES
                    }
                    metrics["slowest_page_ms"] = max(metrics.values())
                    if "dashboard" in pages:
                        metrics["dashboard_ms"] = pages["dashboard"]["median_ms"]
                        metrics["dashboard_queries"] = pages["dashboard"]["queries"]
                    for page in PAGES:
                        metrics[f"{page}_queries"] = pages[page]["queries"]
                    metrics["seed_s"] = seconds
                    metrics["slowest_queries"] = {
                        page: {
                            "ms": pages[page]["slowest_query_ms"],
                            "sql": pages[page]["slowest_query"],
                        }
                        for page in PAGES
                    }
                    collector.add(kind, system, metrics)
            finally:
                backend.drop(database)
        # Ratios per repeat: the two systems' probes of the same repeat index.
        samples = collector.samples[kind]
        for i in range(ctx.args.repeat):
            per_system = {
                s: {k: v[i] for k, v in samples[s].items() if i < len(v)} for s in ("dja", "ours")
            }
            collector.add_ratios(kind, RATIOS, per_system)
    return {"params": p, **collector.summary()}
