"""A throwaway PostgreSQL server for the bench: initdb in a temporary directory, stopped at exit.

PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user (``runuser``) in a directory owned by it. The server listens
on 127.0.0.1 at a free port, trusts local connections, and preloads
pg_stat_statements (the history scenario counts round trips with it).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from bench.common import BenchError


def _bindir() -> Path:
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).parent
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not found:
        raise BenchError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return Path(found[-1]).parent


def available() -> bool:
    try:
        _bindir()
    except BenchError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = _bindir()
        self.dir: Path | None = None
        self.port = 0
        self.running = False
        self.as_postgres = os.geteuid() == 0

    def _run(self, *argv: str, timeout: float = 120) -> str:
        command = [str(self.bindir / argv[0]), *argv[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0:
            raise BenchError(f"{' '.join(argv[:2])} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self) -> PostgresServer:
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        if self.as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        data = self.dir / "data"
        self._run(
            "initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"
        )
        self.port = _free_port()
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c shared_preload_libraries=pg_stat_statements "
            "-c pg_stat_statements.track_utility=on -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(self.dir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True
        atexit.register(self.stop)
        self.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        return self

    def url(self, dbname: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def execute(self, sql: str, params: tuple = (), dbname: str = "postgres") -> list[tuple]:
        with self.connect(dbname) as connection:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def version(self) -> str:
        return self.execute("SHOW server_version")[0][0]

    def stop(self) -> None:
        if self.running and self.dir is not None:
            self.running = False
            try:
                self._run(
                    "pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop", timeout=60
                )
            except (BenchError, subprocess.TimeoutExpired):
                self._run(
                    "pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop", timeout=60
                )
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
