"""The databases the systems run on: a fresh, migrated one per measurement.

Each project (``ours``: this project's settings; ``dja``: the django-apscheduler
project) is migrated once per database kind into a template; every measurement
gets its own copy (a file copy on SQLite, ``CREATE DATABASE ... TEMPLATE`` on
PostgreSQL), dropped afterwards.
"""

from __future__ import annotations

import itertools
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import PYTHON, child_env, run_checked

SETTINGS = {"ours": "bench.ours_settings", "dja": "bench.dja_project.settings"}
MANAGE = {
    "ours": [PYTHON, "manage.py"],
    "dja": [PYTHON, "-m", "bench.dja_project"],
}
# Scenario 8: this project with Django's task framework and django-tasks-db beside it.
SETTINGS["oneoff"] = "bench.oneoff_settings"
MANAGE["oneoff"] = [PYTHON, "manage.py"]


def project_env(project: str, url: str, **extra: Any) -> dict[str, str]:
    return child_env(DJANGO_SETTINGS_MODULE=SETTINGS[project], DATABASE_URL=url, **extra)


class Database:
    """One database: its URL and a DB-API connection for the harness's own queries."""

    kind = ""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name

    def connect(self):  # pragma: no cover - per kind
        raise NotImplementedError

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        connection = self.connect()
        try:
            cursor = connection.execute(sql, params)
            return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()

    def scalar(self, sql: str, params: tuple = ()) -> Any:
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def ts(self, epoch: float) -> Any:
        """A timestamp parameter as this database compares it with Django's datetimes."""
        raise NotImplementedError


class SQLiteDatabase(Database):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__(f"sqlite:///{path}", path.name)
        self.path = path

    def connect(self):
        return sqlite3.connect(self.path, timeout=60, isolation_level=None)

    def ts(self, epoch: float) -> str:
        # Django stores naive UTC text, "YYYY-MM-DD HH:MM:SS[.ffffff]": text order is time order.
        return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None).isoformat(" ")


class PostgresDatabase(Database):
    kind = "postgres"

    def __init__(self, server, name: str) -> None:
        super().__init__(server.url(name), name)
        self.server = server

    def connect(self):
        return self.server.connect(self.name)

    def ts(self, epoch: float) -> datetime:
        return datetime.fromtimestamp(epoch, UTC)


class Backend:
    """Makes databases of one kind."""

    kind = ""

    def __init__(self, workdir: Path, log) -> None:
        self.workdir = workdir
        self.log = log
        self._templates: dict[str, Any] = {}
        self._seq = itertools.count(1)

    def migrate(self, project: str, url: str) -> None:
        run_checked(
            [*MANAGE[project], "migrate", "--no-input", "-v", "0"],
            project_env(project, url),
            600,
            f"migrate {project} on {self.kind}",
        )

    def prepare(self, projects: list[str]) -> None:
        """Migrate the templates of ``projects`` now, side by side."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(projects)) as pool:
            for future in [pool.submit(self._template, p) for p in projects]:
                future.result()

    def _template(self, project: str) -> Any:
        raise NotImplementedError

    def fresh(self, project: str, label: str) -> Database:
        raise NotImplementedError

    def drop(self, database: Database) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def version(self) -> str:
        raise NotImplementedError


class SQLiteBackend(Backend):
    kind = "sqlite"

    def _template(self, project: str) -> Path:
        if project not in self._templates:
            path = self.workdir / f"template-{project}.sqlite3"
            self.log(f"migrating the {project} template on SQLite")
            self.migrate(project, f"sqlite:///{path}")
            connection = sqlite3.connect(path)
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # a plain copy holds it all
            connection.close()
            self._templates[project] = path
        return self._templates[project]

    def fresh(self, project: str, label: str) -> SQLiteDatabase:
        path = self.workdir / f"{label}-{project}-{next(self._seq)}.sqlite3"
        shutil.copyfile(self._template(project), path)
        return SQLiteDatabase(path)

    def drop(self, database: Database) -> None:
        assert isinstance(database, SQLiteDatabase)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{database.path}{suffix}").unlink(missing_ok=True)

    def version(self) -> str:
        return sqlite3.sqlite_version


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self, workdir: Path, log) -> None:
        super().__init__(workdir, log)
        from bench.pg import PostgresServer

        log("starting a PostgreSQL server")
        self.server = PostgresServer().start()

    def _template(self, project: str) -> str:
        if project not in self._templates:
            name = f"bench_template_{project}"
            self.log(f"migrating the {project} template on PostgreSQL")
            self.server.execute(f'CREATE DATABASE "{name}"')
            self.migrate(project, self.server.url(name))
            self._templates[project] = name
        return self._templates[project]

    def fresh(self, project: str, label: str) -> PostgresDatabase:
        name = f"bench_{label}_{project}_{next(self._seq)}"
        self.server.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self._template(project)}"')
        return PostgresDatabase(self.server, name)

    def drop(self, database: Database) -> None:
        self.server.execute(f'DROP DATABASE IF EXISTS "{database.name}" WITH (FORCE)')

    def close(self) -> None:
        self.server.stop()

    def version(self) -> str:
        return self.server.version()
