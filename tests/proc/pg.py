"""A throwaway PostgreSQL server for the integration tests, and a harness on top of it.

``PostgresServer`` runs a real cluster from the installed server binaries
(``pg_config --bindir``, else ``/usr/lib/postgresql/*/bin``): ``initdb`` into a
temporary directory, ``pg_ctl start`` on a free loopback port, ``pg_ctl stop``
and ``start`` again (to restart the database under running schedulers), and
``pg_ctl stop -m immediate`` plus removal of the directory at the end.

PostgreSQL refuses to run as root. When the tests run as root (as here and in
CI), the server commands run as the ``postgres`` user (created by the Debian
package) through ``runuser``, in a directory owned by that user.

``PgSchedulerEnv`` is ``SchedulerEnv`` of tests/proc/harness.py with the
subprocesses pointed at a PostgreSQL database and the helpers reading it with
psycopg.

scripts/chaos.py runs outside pytest and uses the same server and
environment, so only ``postgres_server`` (the tests' way in) imports pytest;
``PostgresServer`` raises ``ServerUnavailable`` where a test would skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tests.proc.harness import SchedulerEnv

NOT_FOUND = "PostgreSQL server binaries not found (install the postgresql Debian package)"
SERVER_USER = "postgres"


class ServerUnavailable(RuntimeError):
    """PostgreSQL cannot be run here (a test skips, saying why)."""


def find_bindir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl``, or None when the server is not installed."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            candidates.append(out)
        except (OSError, subprocess.SubprocessError):
            pass

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.name)
        except ValueError:
            return 0.0

    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    for directory in candidates:
        path = Path(directory)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1 only."""

    def __init__(self, bindir: Path, durable_commits: bool = False) -> None:
        self.bindir = bindir
        # synchronous_commit=off (the default here, for speed) acknowledges a commit
        # before its WAL is written: a crash (``stop("immediate")``) may then lose it.
        # fsync=off stays harmless, as the machine itself does not crash.
        self.durable_commits = durable_commits
        self.as_root = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="ha-pg-"))
        self.data = self.base / "data"
        self.sockets = self.base / "sock"
        self.logfile = self.base / "server.log"
        self.sockets.mkdir()
        if self.as_root:
            try:
                user = pwd.getpwnam(SERVER_USER)
            except KeyError:
                shutil.rmtree(self.base, ignore_errors=True)
                raise ServerUnavailable(
                    f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL"
                ) from None
            for path in (self.base, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.port = 0
        self.running = False

    # -- server commands --------------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [str(self.bindir / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(
            command,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} exited with {result.returncode}:\n"
                f"{result.stdout}{result.stderr}\n{self.log()[-4000:]}"
            )
        return result

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except (FileNotFoundError, PermissionError):
            return ""

    def init(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "--auth=trust",
            "-U",
            SERVER_USER,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )

    def start(self) -> None:
        """Start the server (again) and wait until it accepts connections."""
        if not self.port:
            self.port = free_port()
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.sockets} -c fsync=off "
            "-c full_page_writes=off"
        )
        if not self.durable_commits:
            options += " -c synchronous_commit=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", "-t",
            "60", "start",
        )  # fmt: skip
        self.running = True

    def init_and_start(self) -> None:
        """``initdb``, then start on a free port (another one if someone takes it first)."""
        self.init()
        for attempt in range(3):
            try:
                self.start()
                return
            except RuntimeError:
                # Most likely someone took the free port in between: try another one.
                if attempt == 2:
                    raise
                self.port = 0
                time.sleep(0.2)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE``: fast disconnects every client, immediate aborts."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def teardown(self) -> None:
        try:
            if self.data.exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass  # not running
        self.running = False
        shutil.rmtree(self.base, ignore_errors=True)

    # -- databases ----------------------------------------------------------------

    def url(self, dbname: str) -> str:
        return f"postgres://{SERVER_USER}@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(
            self.url(dbname), autocommit=True, row_factory=dict_row, connect_timeout=10
        )

    def create_database(self, dbname: str) -> str:
        """CREATE DATABASE; returns its URL (the DATABASE_URL of the schedulers)."""
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{dbname}"')
        return self.url(dbname)

    def accepts_connections(self) -> bool:
        try:
            with self.connect() as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """A running throwaway cluster; skips the test when PostgreSQL is not installed."""
    import pytest

    bindir = find_bindir()
    if bindir is None:
        pytest.skip(NOT_FOUND)
    try:
        server = PostgresServer(bindir)
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        server.init_and_start()
        yield server
    finally:
        server.teardown()


class PgSchedulerEnv(SchedulerEnv):
    """``SchedulerEnv`` on a PostgreSQL database: same processes, same helpers.

    SQL passed to :meth:`query` and :meth:`execute` may use ``?`` placeholders,
    as with SQLite; datetimes come back aware, as ``SchedulerEnv.runs`` returns them.
    """

    def __init__(self, directory: Path, server: PostgresServer, dbname: str) -> None:
        super().__init__(directory)
        self.server = server
        self.dbname = dbname
        self.url = server.create_database(dbname)

    def env(
        self, modules: str = "tests.proc.jobs", unbuffered: bool = True, **overrides: Any
    ) -> dict[str, str]:
        env = super().env(modules, unbuffered, **overrides)
        env["DATABASE_URL"] = self.url
        return env

    def migrate(self) -> None:
        result = self.manage("migrate", "--no-input", "-v", "0", timeout=180)
        assert result.returncode == 0, result.stdout + result.stderr

    def connect(self) -> psycopg.Connection:  # type: ignore[override]
        return self.server.connect(self.dbname)

    def query(self, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
        with self.connect() as connection:
            return list(connection.execute(sql.replace("?", "%s"), params or None))

    def execute(self, sql: str, params: tuple | dict = ()) -> int:
        with self.connect() as connection:
            return connection.execute(sql.replace("?", "%s"), params or None).rowcount

    def runs(self, job_id: str | None = None, **where: Any) -> list[dict[str, Any]]:
        clauses, params = [], []
        if job_id is not None:
            clauses.append("job_id = %s")
            params.append(job_id)
        for column, value in where.items():
            clauses.append(f'"{column}" = %s')
            params.append(value)
        sql = "SELECT * FROM scheduler_jobrun"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        return self.query(sql + " ORDER BY scheduled_at, id", tuple(params))

    def stored_jobs(self) -> dict[str, datetime | None]:
        rows = self.query("SELECT id, next_run_time FROM django_apscheduler_djangojob")
        return {row["id"]: row["next_run_time"] for row in rows}

    def request_run(self, job_id: str, requested_by: str = "admin") -> tuple[int, datetime]:
        now = datetime.now(UTC)
        (row,) = self.query(
            'INSERT INTO scheduler_jobrun (job_id, job_name, status, "trigger", scheduled_at, '
            "hostname, instance, requested_by, exception, traceback, output) "
            "VALUES (?, ?, 'queued', 'manual', ?, '', '', ?, '', '', '') RETURNING id",
            (job_id, job_id, now, requested_by),
        )
        return row["id"], now

    def set_paused(self, job_id: str, paused: bool) -> None:
        changed = self.execute(
            "UPDATE scheduler_job SET paused = ?, pending_change = true WHERE id = ?",
            (paused, job_id),
        )
        assert changed == 1, f"no catalog row for {job_id!r}"

    def dump(self) -> str:
        try:
            return super().dump()
        except psycopg.Error as exc:
            return f"(cannot read the database: {exc})"
