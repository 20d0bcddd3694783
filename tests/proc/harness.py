"""Helpers of the integration tests: scheduler subprocesses on a temporary SQLite file."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent.parent
PYTHON = sys.executable
# Printed once the process is up (it may still be a standby).
STARTED_LINE = "Scheduler started"
# Printed once it holds the leader lease, has synced the job store and runs jobs.
ACTIVE_LINE = "Active scheduler now"
# The app's own job (scheduler/jobs.py), registered in every project besides the tests' jobs.
PRUNE = "scheduler.prune_history"

T = TypeVar("T")

# Environment variables of this process that must not leak into the subprocesses.
_LEAKY = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "SCHEDULER_TEST_DIR", "PYTHONUNBUFFERED")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def parse_dt(value: str | None) -> datetime | None:
    """A datetime as Django stores it in SQLite (naive UTC text) -> an aware datetime."""
    if value is None:
        return None
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def db_text(value: datetime) -> str:
    """An aware datetime -> the text Django stores in SQLite."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ")


def sleep_until_fraction(fraction: float) -> None:
    """Sleep until the wall clock is ``fraction`` of a second past a whole second.

    Signals sent mid-second do not land while the scheduler is handing out the
    fire times of a whole second.
    """
    now = time.time()
    target = int(now) + fraction
    if target <= now:
        target += 1
    time.sleep(target - now)


class SchedulerProcess:
    """One ``manage.py runapscheduler`` subprocess, its output going to a log file."""

    def __init__(self, popen: subprocess.Popen, log_path: Path) -> None:
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_started(self, line: str = STARTED_LINE, timeout: float = 20) -> None:
        """Wait for ``line`` in the log; fail at once if the process exits first."""

        def started() -> bool:
            if line in self.log():
                return True
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"runapscheduler exited with {self.popen.returncode} before starting:\n"
                    f"{self.log()}"
                )
            return False

        wait_for(started, timeout, f"{line!r} in {self.log_path}")

    def wait_active(self, timeout: float = 20) -> None:
        self.wait_started(ACTIVE_LINE, timeout)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> float:
        """Send ``signum``; returns the monotonic time it was sent."""
        sent = time.monotonic()
        self.popen.send_signal(signum)
        return sent

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"runapscheduler (pid {self.pid}) still running {timeout} s later:\n{self.log()}"
            ) from None

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM mid-second and wait for the exit code."""
        sleep_until_fraction(0.5)
        self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.alive():
            self.popen.kill()
        self.popen.wait(10)


class SchedulerEnv:
    """A temporary directory with a migrated SQLite database, and the processes that use it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.db_path = directory / "db.sqlite3"
        self.marks_path = directory / "marks.txt"
        self.processes: list[SchedulerProcess] = []
        self._logs = 0

    # -- subprocesses ---------------------------------------------------------

    def env(
        self, modules: str = "tests.proc.jobs", unbuffered: bool = True, **overrides: Any
    ) -> dict[str, str]:
        """Environment of a subprocess: ``overrides`` are SCHEDULER keys (or PROC_* variables)."""
        env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
        env.update(
            DJANGO_SETTINGS_MODULE="tests.proc.settings",
            DATABASE_URL=f"sqlite:///{self.db_path}",
            SCHEDULER_JOB_MODULES=modules,
            PROC_MARKS=str(self.marks_path),
            APSCHEDULER_LOG_LEVEL="WARNING",
        )
        if unbuffered:
            env["PYTHONUNBUFFERED"] = "1"
        for key, value in overrides.items():
            name = key if key.startswith("PROC_") else f"SCHEDULER_{key}"
            env[name] = str(value)
        return env

    def start(
        self,
        modules: str = "tests.proc.jobs",
        wait: str | None = ACTIVE_LINE,
        unbuffered: bool = True,
        **overrides: Any,
    ) -> SchedulerProcess:
        """Start ``runapscheduler``; by default wait until it is the active scheduler.

        ``wait`` is the log line to wait for (None: do not wait).
        """
        self._logs += 1
        log_path = self.dir / f"runapscheduler-{self._logs}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                [PYTHON, "manage.py", "runapscheduler"],
                cwd=ROOT,
                env=self.env(modules, unbuffered, **overrides),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        process = SchedulerProcess(popen, log_path)
        self.processes.append(process)
        if wait:
            process.wait_started(wait)
        return process

    def manage(
        self, *args: str, modules: str = "tests.proc.jobs", timeout: float = 30, **overrides: Any
    ) -> subprocess.CompletedProcess:
        """Run a management command to completion, capturing its output."""
        return subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env=self.env(modules, **overrides),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logs(self) -> list[tuple[str, str]]:
        return [(p.log_path.name, p.log()) for p in self.processes]

    def cleanup(self) -> None:
        for process in self.processes:
            process.kill()

    # -- the database -------------------------------------------------------------

    def connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.db_path, timeout=20, isolation_level=None)
        connection.row_factory = sqlite3.Row
        return connection

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        connection = self.connect()
        try:
            return [dict(row) for row in connection.execute(sql, params)]
        finally:
            connection.close()

    def execute(self, sql: str, params: tuple | dict = ()) -> int:
        connection = self.connect()
        try:
            return connection.execute(sql, params).rowcount
        finally:
            connection.close()

    def runs(self, job_id: str | None = None, **where: Any) -> list[dict[str, Any]]:
        """JobRun rows, oldest fire time first, datetimes parsed."""
        clauses, params = [], []
        if job_id is not None:
            clauses.append("job_id = ?")
            params.append(job_id)
        for column, value in where.items():
            clauses.append(f'"{column}" = ?')
            params.append(value)
        sql = "SELECT * FROM scheduler_jobrun"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        rows = self.query(sql + " ORDER BY scheduled_at, id", tuple(params))
        for row in rows:
            for column in ("scheduled_at", "started_at", "finished_at"):
                row[column] = parse_dt(row[column])
        return rows

    def stored_jobs(self) -> dict[str, datetime | None]:
        """APScheduler's job store: id -> next run time."""
        rows = self.query("SELECT id, next_run_time FROM django_apscheduler_djangojob")
        return {row["id"]: parse_dt(row["next_run_time"]) for row in rows}

    def catalog(self) -> dict[str, dict[str, Any]]:
        return {row["id"]: row for row in self.query("SELECT * FROM scheduler_job")}

    def insert_run(self, **values: Any) -> int:
        """Insert a JobRun row as the admin would (through the ORM: "" for unset text)."""
        connection = self.connect()
        try:
            # Text columns the ORM fills with "" when not given.
            for column in connection.execute("PRAGMA table_info(scheduler_jobrun)"):
                name, kind, not_null, default = column[1], column[2], column[3], column[4]
                textual = "char" in kind.lower() or kind.lower() == "text"
                if not_null and default is None and textual:
                    values.setdefault(name, "")
            values.pop("id", None)
            columns = ", ".join(f'"{name}"' for name in values)
            marks = ", ".join("?" for _ in values)
            cursor = connection.execute(
                f"INSERT INTO scheduler_jobrun ({columns}) VALUES ({marks})", tuple(values.values())
            )
            return cursor.lastrowid
        finally:
            connection.close()

    def request_run(self, job_id: str, requested_by: str = "admin") -> tuple[int, datetime]:
        """What the admin's "Run now" does: insert a queued manual run for now."""
        now = datetime.now(UTC)
        run_id = self.insert_run(
            job_id=job_id,
            job_name=job_id,
            status="queued",
            trigger="manual",
            scheduled_at=db_text(now),
            requested_by=requested_by,
        )
        return run_id, now

    def set_paused(self, job_id: str, paused: bool) -> None:
        """What the admin's pause/resume does."""
        changed = self.execute(
            "UPDATE scheduler_job SET paused = ?, pending_change = 1 WHERE id = ?",
            (paused, job_id),
        )
        assert changed == 1, f"no catalog row for {job_id!r}"

    def started_run(self, job_id: str, start_mark: str, timeout: float = 5) -> dict[str, Any]:
        """A run of ``job_id`` that has begun: its row is ``running`` and the job wrote
        ``"<start_mark> <fire time>"``. (A row alone is not enough: the main loop claims a
        fire time up to 40 ms before it starts the job, claims.CLAIM_LEAD.)"""

        def begun() -> list[dict[str, Any]]:
            marks = set(self.marks())
            rows = self.runs(job_id, status="running")
            return [r for r in rows if f"{start_mark} {r['scheduled_at'].isoformat()}" in marks]

        return wait_for(begun, timeout, f"a running {job_id} that has begun")[0]

    def marks(self) -> list[str]:
        try:
            return self.marks_path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def dump(self) -> str:
        """The run history, for failure reports."""
        try:
            rows = self.runs()
        except sqlite3.Error as exc:
            return f"(cannot read the database: {exc})"
        return "\n".join(
            f"#{r['id']} {r['job_id']} {r['trigger']} {r['status']} scheduled={r['scheduled_at']} "
            f"started={r['started_at']} finished={r['finished_at']} pid={r['pid']} "
            f"{r['exception'][:100]!r}"
            for r in rows
        )
