"""``python -m bench``: run the scenarios against the three systems, print and save the results."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import bench.scenarios.oneoff as oneoff
import bench.scenarios.oneoff_scale as oneoff_scale
from bench import report
from bench.common import ROOT, BenchError, Log, kill_children, loadavg, median
from bench.databases import Backend, PostgresBackend, SQLiteBackend
from bench.scenarios import Context, accuracy, admin, fleet, history, isolation, load, store

SCENARIOS = (
    accuracy,
    *accuracy.VARIANTS,
    load,
    store,
    *store.VARIANTS,
    admin,
    history,
    isolation,
    fleet,
    *fleet.VARIANTS,
    oneoff,
    oneoff_scale,
)
MODULES = {m.NAME: m for m in SCENARIOS}

# name: (default, smoke default)
SIZES = {
    "repeat": (3, 1),
    "duration": (30, 2),
    "accuracy_jobs": (20, 5),
    "load_jobs": (200, 20),
    "store_jobs": (10_000, 200),
    "store_large_jobs": (100_000, 400),
    "admin_rows": (1_000_000, 5_000),
    "requests": (5, 2),
    "history_runs": (1000, 50),
    "warmup": (2.0, 1.0),
    "drain": (1.5, 0.5),
    "fleet_jobs": (20, 3),
    "fleet_rates": ("100,200,300,500,750,1000,1500", "10"),
    "fleet_rate_duration": (60, 1),
    "fleet_workers": (2, 1),
    "fleet_concurrency": (4, 2),
    "fleet_drain_timeout": (300.0, 30.0),
    "oneoff_runs": (5000, 200),
    "oneoff_waiting": (1_000_000, 5_000),
}

DEFAULT_OUTPUT = ROOT / "bench" / "results" / "latest.json"
DEFAULT_DOCS = ROOT / "docs" / "benchmarks.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark this project against plain APScheduler (in-memory floor) and "
        "django-apscheduler, on SQLite and PostgreSQL.",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="SCENARIO",
        help=f"run only this scenario (repeatable, or comma-separated): {', '.join(MODULES)}",
    )
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--smoke", action="store_true", help="seconds-long run: tiny sizes, 1 repeat"
    )
    parser.add_argument("--repeat", type=int, help="runs per figure, median taken (default 3)")
    parser.add_argument("--duration", type=int, help="seconds of scenarios 1 and 2 (default 30)")
    parser.add_argument("--accuracy-jobs", type=int, help="scenario 1 jobs (default 20)")
    parser.add_argument("--load-jobs", type=int, help="scenario 2 jobs (default 200)")
    parser.add_argument("--store-jobs", type=int, help="scenarios 3, 3b jobs (default 10000)")
    parser.add_argument(
        "--store-large-jobs", type=int, help="scenarios 3c, 3d jobs (default 100000)"
    )
    parser.add_argument(
        "--large-dja",
        action="store_true",
        help="run django-apscheduler in scenarios 3c and 3d too (minutes per start)",
    )
    parser.add_argument("--admin-rows", type=int, help="scenario 4 history rows (default 1000000)")
    parser.add_argument("--requests", type=int, help="scenario 4 timed requests per page (5)")
    parser.add_argument("--history-runs", type=int, help="scenario 5 timed runs (default 1000)")
    parser.add_argument(
        "--oneoff-runs", type=int, help="scenario 7 runs enqueued and executed (default 5000)"
    )
    parser.add_argument(
        "--oneoff-waiting", type=int, help="scenario 7b runs waiting (default 1000000)"
    )
    parser.add_argument("--warmup", type=float, help="seconds between ready and the window (2)")
    parser.add_argument("--drain", type=float, help="seconds after the window for late runs (1.5)")
    parser.add_argument("--fleet-jobs", type=int, help="scenario 7 jobs (default 20)")
    parser.add_argument(
        "--fleet-rates",
        help="scenario 7b: jobs every second to step through, comma-separated "
        "(default 100,200,300,500,750,1000,1500)",
    )
    parser.add_argument(
        "--fleet-rate-duration", type=int, help="scenario 7b seconds per step (default 60)"
    )
    parser.add_argument("--fleet-workers", type=int, help="scenario 7 Celery workers (2)")
    parser.add_argument(
        "--fleet-concurrency", type=int, help="scenario 7 prefork processes per worker (4)"
    )
    parser.add_argument(
        "--fleet-drain-timeout",
        type=float,
        help="scenario 7 seconds for the workers to catch up after the window (300)",
    )
    parser.add_argument(
        "--work",
        choices=["sleep", "spin"],
        default="sleep",
        help="scenario 2 job body: 1 ms of sleep (I/O-like, default) or of busy CPU",
    )
    parser.add_argument("--start-timeout", type=float, default=180, help="seconds to get ready")
    parser.add_argument("--store-timeout", type=float, default=600, help="same, scenario 3")
    parser.add_argument("--output", type=Path, help=f"JSON results (default {DEFAULT_OUTPUT})")
    parser.add_argument(
        "--docs",
        type=Path,
        help=f"write the Markdown report here (default {DEFAULT_DOCS}, not with --smoke)",
    )
    parser.add_argument("--no-docs", action="store_true", help="do not write the Markdown report")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, DBs)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --only: replace just those scenarios in the existing --output results "
        "(the report lists what was re-run, when, at which commit)",
    )
    parser.add_argument(
        "--from-json",
        type=Path,
        metavar="JSON",
        help="measure nothing: print and write the report (--docs) from saved results",
    )
    args = parser.parse_args(argv)

    for name, (default, smoke) in SIZES.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else default)
    only: list[str] = []
    for item in args.only or []:
        only += [s.strip() for s in item.split(",") if s.strip()]
    unknown = set(only) - set(MODULES)
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(MODULES)}"
        )
    args.scenarios = [name for name in MODULES if not only or name in only]
    if args.output is None:
        args.output = DEFAULT_OUTPUT
    if args.no_docs or (args.smoke and args.docs is None):
        args.docs = None
    elif args.docs is None:
        args.docs = DEFAULT_DOCS
    return args


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions(backends: dict[str, Backend]) -> dict[str, str]:
    found = {"Python": platform.python_version()}
    for name, dist in (
        ("Django", "Django"),
        ("APScheduler", "APScheduler"),
        ("django-apscheduler", "django-apscheduler"),
        ("psycopg", "psycopg"),
    ):
        try:
            found[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    for kind, backend in backends.items():
        found[report.DB_LABELS[kind]] = backend.version()
    return found


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "scheduler"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return f"{head}{' (scheduler/ modified)' if dirty else ''}" if head else "?"
    except OSError:
        return "?"


def _on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def noise_summary(results: dict) -> str:
    values = []
    for data in results["scenarios"].values():
        for by_system in data.get("results", {}).values():
            for metrics in by_system.values():
                values += [v for v in metrics["samples"].get("other_cpu_pct", []) if v is not None]
    if not values:
        return "—"
    return (
        f"{median(values):.0f} % of the machine's CPU at the median, "
        f"{max(values):.0f} % at worst (other processes, during scenarios 1-2)"
    )


def write_report(args: argparse.Namespace, results: dict[str, Any], log: Log) -> None:
    print(report.render_text(results, MODULES))
    if args.docs is not None:
        chart_path = args.docs.with_suffix(".png")
        chart = chart_path.name if report.render_chart(results, chart_path) else None
        args.docs.parent.mkdir(parents=True, exist_ok=True)
        args.docs.write_text(report.render_markdown(results, MODULES, chart))
        log(f"report written to {args.docs}" + (f" and {chart_path}" if chart else ""))


def _update(previous: dict[str, Any], new: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The previous results with scenarios ``names`` replaced by the new run's."""
    merged = {**previous, "scenarios": {**previous.get("scenarios", {})}}
    for name in names:
        merged["scenarios"][name] = new["scenarios"][name]
    meta = new["meta"]
    machine = meta["machine"]
    merged["meta"] = {
        **previous["meta"],
        "reruns": [
            *previous["meta"].get("reruns", []),
            f"{', '.join(names)}: re-run {meta['finished']} at {meta['commit']} on "
            f"{machine['cpu']} × {machine['cores']} cores, {machine['ram_gb']:.1f} GB, "
            f"load average {meta['noise']['load_start']} / {meta['noise']['load_end']} "
            f"(`{meta['command']}`)",
        ],
    }
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        results["targets"] = report.evaluate_targets(results, MODULES)
        write_report(args, results, Log(args.quiet))
        return 0
    signal.signal(signal.SIGTERM, _on_sigterm)
    log = Log(args.quiet)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    backends: dict[str, Backend] = {}
    results: dict[str, Any] = {"scenarios": {}}
    failed = False
    load_start = loadavg()
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    if "postgres" in kinds:
        from bench import pg

        if not pg.available():
            print(
                "PostgreSQL server binaries not found: install postgresql, or pass --db sqlite",
                file=sys.stderr,
            )
            return 2
    try:
        for kind in kinds:
            backends[kind] = (SQLiteBackend if kind == "sqlite" else PostgresBackend)(workdir, log)
        for backend in backends.values():
            backend.prepare(["dja", "ours"])
        ctx = Context(args=args, backends=backends, workdir=workdir, log=log)
        for name in args.scenarios:
            module = MODULES[name]
            log(f"== {module.TITLE}")
            t0 = time.monotonic()
            try:
                data = module.run(ctx)
            except BenchError as exc:
                failed = True
                log(f"{name} failed: {exc}")
                data = {"params": module.params(args), "error": str(exc)}
            except Exception as exc:  # report and go on with the next scenario
                failed = True
                log(f"{name} failed:\n{traceback.format_exc()}")
                data = {"params": module.params(args), "error": f"{type(exc).__name__}: {exc}"}
            data["elapsed_s"] = time.monotonic() - t0
            results["scenarios"][name] = data
        results["meta"] = {
            "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
            "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "elapsed_s": time.monotonic() - started,
            "commit": git_commit(),
            "machine": machine_info(),
            "versions": versions(backends),
            "args": {k: str(v) for k, v in vars(args).items()},
            "noise": {
                "load_start": " ".join(f"{x:.2f}" for x in load_start),
                "load_end": " ".join(f"{x:.2f}" for x in loadavg()),
            },
            "smoke": args.smoke,
        }
        results["meta"]["noise"]["other_cpu"] = noise_summary(results)
        changed = [
            f"{name.replace('_', '-')} {getattr(args, name)}"
            for name, (default, _) in SIZES.items()
            if getattr(args, name) != default
        ]
        if args.smoke:
            results["meta"]["caveat"] = "Smoke run: tiny sizes, figures are not meaningful."
        elif changed:
            results["meta"]["caveat"] = (
                f"Not the default sizes ({', '.join(changed)}): a validation run, not final "
                "figures. Take those with plain `python -m bench` on a quiet machine."
            )
        results["targets"] = report.evaluate_targets(results, MODULES)
    finally:
        kill_children()
        for backend in backends.values():
            try:
                backend.close()
            except Exception as exc:  # noqa: BLE001 - reporting is more useful than dying here
                log(f"could not stop the {backend.kind} server: {exc}")
        if args.keep or failed:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    if args.update and args.output.exists():
        results = _update(json.loads(args.output.read_text()), results, args.scenarios)
        results["targets"] = report.evaluate_targets(results, MODULES)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1, default=str) + "\n")
    log(f"results written to {args.output}")
    write_report(args, results, log)
    return 1 if failed else 0
