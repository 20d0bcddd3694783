"""The benchmark suite runs end to end: ``python -m bench --smoke --db sqlite``.

Seconds-long sizes, one repeat; the figures mean nothing, but every scenario
must run against every system and write numbers. The JSON goes to a temporary
file, not over bench/results/latest.json, and --smoke writes no docs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import django
import pytest

from bench.cli import MODULES

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
# Keys every scenario must report, per database-backed system (and the floor where it runs).
REQUIRED = {
    "accuracy": {"seen": ("floor", "dja", "ours"), "late_p99_ms": ("floor", "ours")},
    "accuracy_first": {"seen": ("floor", "dja", "ours"), "late_p99_ms": ("floor", "ours")},
    "load": {"seen": ("floor", "dja", "ours"), "cpu_s": ("floor", "ours")},
    "store": {
        "first_start_s": ("floor", "dja", "ours"),
        "wakeup_ms": ("floor", "dja", "ours"),
        "idle_statements_per_s": ("dja", "ours"),
    },
    "store_distinct": {
        "first_start_s": ("floor", "dja", "ours"),
        "restart_s": ("floor", "dja", "ours"),
        "wakeup_ms": ("floor", "dja", "ours"),
    },
    # 100,000 jobs: django-apscheduler only with --large-dja (minutes per start).
    "store_large": {"first_start_s": ("floor", "ours"), "wakeup_ms": ("floor", "ours")},
    "store_large_distinct": {"restart_s": ("floor", "ours"), "peak_rss_mb": ("floor", "ours")},
    "admin": {"list_ms": ("dja", "ours"), "by_job_ms": ("dja", "ours")},
    "history": {"statements_per_run": ("dja", "ours"), "overhead_us": ("floor", "dja", "ours")},
    "isolation": {"process_p99_ms": ("ours",), "overhead_p99_ms": ("ours",)},
    # Celery Beat and this project's Celery executor, on a real Redis and real workers.
    "fleet": {
        "seen": ("beat", "ours"),
        "late_p99_ms": ("beat", "ours"),
        "cpu_pct": ("beat", "ours"),
        "outcomes_recorded": ("beat", "ours"),
        "history_complete": ("ours",),
    },
    "fleet_rate": {"max_rate": ("beat", "ours")},
    "oneoff": {
        "enqueue_per_s": ("ours", "ours_tasks", "dtdb"),
        "enqueue_p99_ms": ("ours", "ours_tasks", "dtdb"),
        "execute_per_s": ("ours", "ours_tasks", "dtdb"),
    },
    "oneoff_scale": {"pending_ms": ("ours",), "due_batch_ms": ("ours",)},
}


def scenarios_here() -> list[str]:
    """The scenarios this run smokes: every other one on each CI leg (Django 5.2, Django 6),
    so that each CI run smokes every scenario once, in half the time a leg (the smoke
    of all took 107 s of a leg's 17 min); all with BENCH_SMOKE_ALL=1."""
    names = list(MODULES)
    if os.environ.get("BENCH_SMOKE_ALL") == "1":
        return names
    return names[0::2] if django.VERSION < (6, 0) else names[1::2]


def test_smoke_run_writes_every_scenario(tmp_path: Path) -> None:
    output = tmp_path / "smoke.json"
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE",)}
    names = scenarios_here()
    command = [sys.executable, "-m", "bench", "--smoke", "--db", "sqlite", "--output", str(output)]
    try:
        result = subprocess.run(
            [*command, "--only", ",".join(names)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            # Well under a minute on a quiet machine; generous for a busy one. On a
            # timeout the bench is killed, and its children die with it (PDEATHSIG).
            timeout=240,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"python -m bench --smoke timed out:\n{exc.stderr}")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    data = json.loads(output.read_text())
    assert set(data["scenarios"]) == set(names)
    for name, scenario in data["scenarios"].items():
        assert "error" not in scenario, f"{name}: {scenario.get('error')}"
        medians = {
            system: values["median"] for system, values in scenario["results"]["sqlite"].items()
        }
        for key, systems in REQUIRED[name].items():
            for system in systems:
                value = medians[system].get(key)
                assert isinstance(value, (int, float)), f"{name}: {system} has no {key}: {value!r}"
    # The database-backed systems really ran jobs and wrote history.
    scenarios = data["scenarios"]

    def ours(name: str, key: str) -> Any:
        return scenarios[name]["results"]["sqlite"]["ours"]["median"][key]

    if "accuracy" in scenarios:
        assert ours("accuracy", "seen") > 0
    if "accuracy_first" in scenarios:
        assert ours("accuracy_first", "seen") > 0
    if "load" in scenarios:
        assert ours("load", "history_rows") > 0
    if "fleet" in scenarios:
        fleet = scenarios["fleet"]["results"]["sqlite"]
        assert fleet["beat"]["median"]["seen"] > 0 and fleet["ours"]["median"]["seen"] > 0
        assert fleet["ours"]["median"]["outcomes_recorded"] > 0
    assert {t["scenario"] for t in data["targets"]} <= set(names)
    assert "Targets" in result.stdout
