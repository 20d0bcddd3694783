"""Tables, targets, docs/benchmarks.md and the chart, from the results dict."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from bench.systems import LABELS

DB_LABELS = {"sqlite": "SQLite", "postgres": "PostgreSQL"}


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if digits == 0:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"
    return str(value)


def _median(results: dict, scenario: str, db: str, system: str, key: str) -> Any:
    try:
        return results["scenarios"][scenario]["results"][db][system]["median"].get(key)
    except (KeyError, TypeError):
        return None


def evaluate_targets(results: dict, modules: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target, per database, for this project and (for comparison) django-apscheduler."""
    rows = []
    scenarios = results.get("scenarios", {})
    for name, module in modules.items():
        data = scenarios.get(name)
        if not data or "results" not in data:
            continue
        for db in data["results"]:
            for target in module.TARGETS:
                for system in ("ours", target.compare):
                    if target.ratio:
                        key = target.key.replace(":ours/", f":{system}/")
                        value = data.get("ratios", {}).get(db, {}).get(key)
                    else:
                        source = target.scenario or name
                        value = _median(results, source, db, system, target.key)
                    limit_system = target.limit_system or system
                    if target.limit_key:
                        limit = _median(results, name, db, limit_system, target.limit_key)
                        if limit is not None and target.limit_system:
                            limit += target.limit or 0
                    else:
                        limit = target.limit
                    passed = None
                    # A system is not judged against itself (its own figure + a margin).
                    judged = not (target.limit_system and limit_system == system)
                    if judged and value is not None and limit is not None:
                        passed = {
                            "<=": value <= limit + 1e-9,
                            ">=": value >= limit - 1e-9,
                            "==": abs(value - limit) < 1e-9,
                        }[target.op]
                    rows.append(
                        {
                            "scenario": name,
                            "db": db,
                            "system": system,
                            "target": target.label,
                            "goal": target.text,
                            "value": value,
                            "limit": limit,
                            "unit": target.unit,
                            "pass": passed,
                        }
                    )
    return rows


def _verdict(passed: bool | None) -> str:
    return {True: "PASS", False: "FAIL", None: "n/a"}[passed]


def _value_text(row: dict) -> str:
    value = row["value"]
    if value is None:
        return "—"
    digits = 2 if abs(value) < 10 else 1
    if float(value).is_integer():
        digits = 0
    unit = row["unit"]
    return f"{fmt(value, digits)}{(' ' + unit) if unit and unit != '×' else ''}" + (
        "×" if unit == "×" else ""
    )


# -- tables -------------------------------------------------------------------------------


def _systems(module: Any) -> tuple[str, ...]:
    """The table's columns: the systems the scenario's metrics name, in their order."""
    found: list[str] = []
    for metric in module.METRICS:
        found += [s for s in metric.systems if s not in found]
    return tuple(found)


def scenario_tables(name: str, data: dict, module: Any) -> list[tuple[str, list[list[str]]]]:
    """(title, rows) per database: metric, the scenario's systems (by default the three),
    the ratios; then the scenario's own further tables (``extra_tables``), if any."""
    tables = []
    columns = getattr(module, "SYSTEMS", None) or _systems(module)
    for db, by_system in data.get("results", {}).items():
        ratios = data.get("ratios", {}).get(db, {})
        header = ["metric", *(LABELS[s] for s in columns), "ratios"]
        rows = [header]
        for metric in module.METRICS:
            cells = [metric.label + (f" ({metric.unit})" if metric.unit else "")]
            for system in columns:
                if system not in metric.systems or system not in by_system:
                    cells.append("—")
                    continue
                cells.append(fmt(by_system[system]["median"].get(metric.key), metric.digits))
            notes = []
            for r in module.RATIOS:
                if r.key == metric.key and ratios.get(r.name) is not None:
                    notes.append(f"{r.a}/{r.b} {ratios[r.name]:.2f}×")
            cells.append(", ".join(notes))
            rows.append(cells)
        tables.append((f"{module.TITLE} — {DB_LABELS.get(db, db)}", rows))
    if hasattr(module, "extra_tables"):
        tables += [(f"{module.TITLE} — {title}", rows) for title, rows in module.extra_tables(data)]
    return tables


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [
            cell.ljust(widths[i]) if i == 0 or i == len(row) - 1 else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(rows: list[list[str]], align: str | None = None) -> str:
    def esc(cell: str) -> str:
        if cell.startswith("  "):  # an indented sub-row: Markdown would trim the indent
            cell = "↳ " + cell.strip()
        return cell.replace("|", "\\|")

    align = align or ("l" + "r" * (len(rows[0]) - 2) + "l")
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(esc(c) for c in rows[0]) + " |"]
    lines.append("| " + " | ".join(marks[a] for a in align) + " |")
    for row in rows[1:]:
        lines.append("| " + " | ".join(esc(c) for c in row) + " |")
    return "\n".join(lines)


def target_rows(targets: list[dict]) -> list[list[str]]:
    rows = [["scenario", "database", "target", "goal", "this project", "", "compared with", ""]]
    by_key: dict[tuple, dict[str, dict]] = {}
    for row in targets:
        by_key.setdefault((row["scenario"], row["db"], row["target"]), {})[row["system"]] = row
    for (scenario, db, target), per_system in by_key.items():
        ours = per_system.get("ours", {})
        other_system = next((s for s in per_system if s != "ours"), "dja")
        other = per_system.get(other_system, {})
        goal = ours.get("goal") or other.get("goal", "")
        other_text = f"{LABELS[other_system]}: {_value_text(other)}" if other else "—"
        rows.append(
            [
                scenario,
                DB_LABELS.get(db, db),
                target,
                goal,
                _value_text(ours) if ours else "—",
                _verdict(ours.get("pass")),
                other_text,
                _verdict(other.get("pass")),
            ]
        )
    return rows


LEGEND = (
    "floor = plain APScheduler with a memory store, dja = django-apscheduler, beat = Celery "
    "Beat (scenario 7), ours = this project; a ratio a/b is taken within each repeat, then "
    "the median over repeats."
)


def render_text(results: dict, modules: dict[str, Any]) -> str:
    out = [f"Ratios: {LEGEND}", ""]
    for name, module in modules.items():
        data = results["scenarios"].get(name)
        if not data:
            continue
        if data.get("error"):
            out.append(f"{module.TITLE}: ERROR {data['error']}\n")
            continue
        out.append(f"{module.TITLE}: {module.SUMMARY.format(**data['params'])}")
        for title, rows in scenario_tables(name, data, module):
            out.append(f"\n{title}\n{text_table(rows)}")
        out.append("")
    targets = results.get("targets", [])
    if targets:
        out.append("Targets (this project; django-apscheduler or Celery Beat for comparison)")
        out.append(text_table(target_rows(targets)))
    return "\n".join(out)


# -- docs ---------------------------------------------------------------------------------


def _doc(module: Any) -> str:
    """The module docstring without its first line (the summary line says it with the sizes)."""
    doc = inspect.getdoc(module) or ""
    return doc.split("\n\n", 1)[1] if "\n\n" in doc else ""


def render_markdown(results: dict, modules: dict[str, Any], chart: str | None) -> str:
    meta = results["meta"]
    machine = meta["machine"]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m bench` (bench/report.py): edit the generator, not this "
        "file. -->",
        "",
        "This project (`runapscheduler`) measured against plain APScheduler with an in-memory "
        "store (the floor: no database at all) and against django-apscheduler set up exactly as "
        "its README shows, in the same run on the same machine, on SQLite and PostgreSQL. Each "
        "figure is the median of the repeated runs; each ratio is taken within one repeat "
        "(same conditions) and then the median of those.",
        "",
        f"In the tables' ratio column: {LEGEND}",
        "",
        "```bash",
        "pip install -r requirements-bench.txt   # matplotlib, for the chart; profilers",
        "python -m bench                          # every scenario, SQLite and PostgreSQL",
        "python -m bench --smoke --db sqlite      # seconds-long check that everything runs",
        "python -m bench --only load --db postgres --duration 60 --repeat 5",
        "```",
        "",
        "Results go to `bench/results/latest.json` (every sample), this page and "
        "`docs/benchmarks.png`; `--output` and `--docs` write elsewhere. A PostgreSQL 15+ "
        "server binary must be installed (the bench starts its own throwaway server).",
        "",
    ]
    noise = meta.get("noise", {})
    lines += [
        "## This run",
        "",
        md_table(
            [
                ["", ""],
                ["date", meta["finished"]],
                ["command", f"`{meta['command']}`"],
                ["commit", meta.get("commit", "?")],
                ["CPU", f"{machine['cpu']} × {machine['cores']} cores"],
                ["RAM", f"{machine['ram_gb']:.1f} GB"],
                ["OS", machine["os"]],
                ["versions", ", ".join(f"{k} {v}" for k, v in meta["versions"].items())],
                [
                    "load average at start / end",
                    f"{noise.get('load_start')} / {noise.get('load_end')}",
                ],
                ["other load during the windows", noise.get("other_cpu", "—")],
                ["duration", f"{meta['elapsed_s'] / 60:.1f} min"],
            ],
            "ll",
        ),
        "",
    ]
    if meta.get("caveat"):
        lines += [f"> **{meta['caveat']}**", ""]
    for rerun in meta.get("reruns", []):
        lines += [f"> Scenario {rerun}.", ""]
    targets = results.get("targets", [])
    if targets:
        lines += [
            "## Targets",
            "",
            "Pass/fail of this project against each target; django-apscheduler (Celery Beat "
            "in scenario 7) judged by the same yardstick, for comparison.",
            "",
            md_table(target_rows(targets), "llll" + "rlrl"),
            "",
        ]
    if chart:
        lines += [f"![Benchmark chart]({chart})", ""]
    for name, module in modules.items():
        data = results["scenarios"].get(name)
        if not data:
            continue
        lines += [f"## {module.TITLE}", ""]
        if data.get("error"):
            lines += [f"Did not complete: `{data['error']}`", ""]
            continue
        lines += [f"*{module.SUMMARY.format(**data['params'])}.*", "", _doc(module), ""]
        for title, rows in scenario_tables(name, data, module):
            lines += [f"**{title.split(' — ', 1)[1]}**", "", md_table(rows), ""]
    lines += ["## Method and caveats", "", METHOD, ""]
    return "\n".join(lines)


METHOD = """\
- Every system runs in its own process, started by the harness, on a fresh copy of a
  migrated database; plain APScheduler has no database. Plain APScheduler and
  django-apscheduler run 10 worker threads (APScheduler's ThreadPoolExecutor default);
  this project its default `THREADS`, 20, in its own pool that hands work to the thread
  idle last (scheduler/pool.py).
- Bytecode is cached as in a deployment: the harness removes PYTHONDONTWRITEBYTECODE
  from the systems' environment, so only the first start of a run compiles the
  projects' modules.
- django-apscheduler runs its README's management command (bench/dja_project/): a
  BlockingScheduler with `DjangoJobStore`, `add_job(..., replace_existing=True)`, its
  execution history, and Django's default database settings (on SQLite: no WAL, no busy
  timeout beyond the 5 s default, no connection reuse). This project runs `runapscheduler`
  with the example project's settings (SQLite: WAL, IMMEDIATE transactions, 20 s busy
  timeout; connections reused for 60 s with health checks), jobs declared with `@cron` and
  `@interval` in bench/jobs_ours.py.
- Jobs measure themselves: `time.time()` is the first statement of each run. This project
  passes `scheduled_at`; for the others the job derives its fire time by rounding its
  start down to the fire-time grid, which is exact while a run starts less than a second
  late (later runs would be counted against the wrong second). APScheduler's defaults
  apply to the others: `misfire_grace_time` 1 s, `coalesce` on.
- A process that dies during a run (django-apscheduler on SQLite: "database is locked"
  escapes `update_job` in APScheduler's main loop, which does not guard it) has no CPU or
  lateness figure; every run it did not make counts as missed.
- CPU is utime + stime of the scheduler process (all threads) from /proc/PID/stat over the
  measured window; peak RSS is VmHWM from /proc/PID/status.
- "other load" is the machine's CPU use during the windows minus the measured process's:
  other processes, i.e. noise. The machine is shared: figures taken while it is high are
  noisy. Take final figures on a quiet machine with the default durations and repeats.
- Scenario 4 fills the history tables straight in SQL (bench/seed.py): 200 jobs, rows
  spread over 30 days, 95 % succeeded / 3 % failed / 1 % missed / 1 % skipped. PostgreSQL
  gets an ANALYZE afterwards (autovacuum would run one soon); SQLite none (Django never
  runs one).
- The PostgreSQL server is a throwaway one the bench starts (default configuration,
  fsync on, pg_stat_statements loaded for counting round trips).
"""


# -- chart -----------------------------------------------------------------------------------

# (scenario, metric, title, log scale, target line)
CHART = [
    ("accuracy", "late_p99_ms", "1. lateness p99 (ms)", True, 15),
    ("load", "cpu_ms_per_run", "2. scheduler CPU per run (ms)", False, None),
    ("store", "restart_s", "3. restart with the store full (s)", True, 1),
    ("store_large_distinct", "restart_s", "3d. restart, 100,000 distinct (s)", True, 2),
    ("admin", "slowest_page_ms", "4. slowest runs-list page (ms)", False, 250),
    ("history", "overhead_us", "5. history overhead per run (µs)", True, None),
]


def render_chart(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        c
        for c in CHART
        if c[0] in results["scenarios"] and results["scenarios"][c[0]].get("results")
    ]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    colors = {"floor": "#9e9e9e", "dja": "#e07b39", "ours": "#2e7d32"}
    for ax, (scenario, key, title, log, target) in zip(axes[0], panels, strict=True):
        data = results["scenarios"][scenario]["results"]
        dbs = list(data)
        width = 0.27
        died_at: list[float] = []
        for i, system in enumerate(("floor", "dja", "ours")):
            values = [data[db].get(system, {}).get("median", {}).get(key) for db in dbs]
            xs = [j + (i - 1) * width for j in range(len(dbs))]
            bars = ax.bar(
                xs,
                [v if v is not None else 0 for v in values],
                width,
                label=LABELS[system],
                color=colors[system],
            )
            for bar, v, db in zip(bars, values, dbs, strict=True):
                died = data[db].get(system, {}).get("median", {}).get("died")
                x = bar.get_x() + bar.get_width() / 2
                if v is not None:
                    ax.annotate(f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=7)
                elif died:
                    died_at.append(x)
        if target is not None:
            ax.axhline(target, color="#c62828", linestyle="--", linewidth=1)
        ax.set_xticks(range(len(dbs)), [DB_LABELS.get(db, db) for db in dbs])
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        for x in died_at:  # once the axis limits are final
            ax.annotate(
                "died", (x, ax.get_ylim()[0]), ha="center", va="bottom", fontsize=7, color="#c62828"
            )
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(
        "lower is better; medians of the repeats; dashed: this project's target", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
