"""The by-hand check of the scheduler: run the demo jobs for a while, restart it
in the middle, kill -9 it during a run, and report the history it left.

    .venv/bin/python scripts/soak.py --seconds 300

Runs on a fresh SQLite file (or DATABASE_URL) in a temporary folder, with this
project's jobs.py. Prints, per job, the rows by status, duplicate fire times,
and the gaps between consecutive fire times (a gap other than the job's
interval is a skipped run unless a `missed` row covers it).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start(env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "runapscheduler"],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def wait_for(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {text!r} in {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=300)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="scheduler-soak-"))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings", "PYTHONUNBUFFERED": "1"}
    env.setdefault("DATABASE_URL", f"sqlite:///{folder / 'db.sqlite3'}")
    # The example settings refuse to start without a key when DEBUG is off.
    env.setdefault("SECRET_KEY", "soak-only-" + "x" * 50)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    began = time.monotonic()
    events = []

    def event(text: str) -> None:
        events.append(f"{time.monotonic() - began:6.1f} s  {text}")
        print(events[-1], flush=True)

    first = start(env, folder / "p1.log")
    event(f"started pid {first.pid}")
    time.sleep(args.seconds / 2)
    first.send_signal(signal.SIGTERM)
    event(f"SIGTERM pid {first.pid}: exit {first.wait()}")

    second = start(env, folder / "p2.log")
    event(f"started pid {second.pid}")
    wait_for(folder / "p2.log", "indexed batch 2/5", timeout=90)
    second.kill()
    event(f"kill -9 pid {second.pid} during jobs.rebuild_search_index: exit {second.wait()}")
    time.sleep(3)

    third = start(env, folder / "p3.log")
    event(f"started pid {third.pid}")
    time.sleep(max(0.0, args.seconds - (time.monotonic() - began)))
    third.send_signal(signal.SIGTERM)
    event(f"SIGTERM pid {third.pid}: exit {third.wait()}")

    if env["DATABASE_URL"].startswith("sqlite"):
        report(Path(env["DATABASE_URL"].removeprefix("sqlite:///")))
    print(f"logs and database: {folder}")


def report(db_path: Path) -> None:
    connection = sqlite3.connect(db_path)
    rows = connection.execute(
        "SELECT job_id, status, trigger, scheduled_at, started_at, exception "
        "FROM scheduler_jobrun ORDER BY scheduled_at"
    ).fetchall()
    print(f"\n{len(rows)} runs: {dict(collections.Counter(r[1] for r in rows))}")
    by_job = collections.defaultdict(list)
    for row in rows:
        by_job[row[0]].append(row)
    for job_id, runs in sorted(by_job.items()):
        times = [datetime.fromisoformat(r[3]) for r in runs if r[2] == "schedule"]
        duplicates = sum(n - 1 for n in collections.Counter(times).values() if n > 1)
        gaps = sorted({round((b - a).total_seconds(), 1) for a, b in itertools.pairwise(times)})
        statuses = dict(collections.Counter(r[1] for r in runs))
        print(f"{job_id}: {statuses}, duplicate fire times: {duplicates}, gaps (s): {gaps}")
    for row in rows:
        if row[1] in ("interrupted", "missed", "skipped"):
            print(f"  {row[1]:<11} {row[0]} @ {row[3]}: {row[5][:100]}")
    lateness = sorted(
        (datetime.fromisoformat(r[4]) - datetime.fromisoformat(r[3])).total_seconds()
        for r in rows
        if r[4] and r[2] == "schedule"
    )
    if lateness:
        print(
            f"start lateness: p50 {lateness[len(lateness) // 2] * 1000:.1f} ms, "
            f"p99 {lateness[int(len(lateness) * 0.99)] * 1000:.1f} ms, "
            f"max {lateness[-1] * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
