"""scheduler/db.py: which errors are outages, retrying through them, SQLite's writer turn and
the migrations check, on real databases.

In process on the test database (a SQLite file); in ``manage.py shell`` subprocesses on
fresh databases (a SQLite file, a throwaway PostgreSQL server), whose default database is
the one under test. Nothing is mocked: a locked database is locked by another connection,
a unique violation is a duplicate row, an outage is a stopped server.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from django.db import IntegrityError, OperationalError, connection
from django.db.backends.signals import connection_created

from scheduler import db
from scheduler.models import JobRun
from tests.helpers import T0
from tests.proc.harness import PYTHON, ROOT, SchedulerEnv
from tests.proc.pg import PgSchedulerEnv, PostgresServer, postgres_server

MIGRATIONS = ROOT / "scheduler" / "migrations"


def new_run() -> JobRun:
    """A write: the row of a scheduled fire time (a second one for it breaks the fence)."""
    return JobRun.objects.create(
        job_id="t.db", status="succeeded", trigger="schedule", scheduled_at=T0
    )


@pytest.fixture
def impatient(transactional_db: None) -> Iterator[None]:
    """The test database's connections wait 50 ms for the write lock (not the 20 s of the
    settings); in autocommit, as the scheduler's."""

    def shorten(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection.vendor == "sqlite":
            connection.connection.execute("PRAGMA busy_timeout = 50")

    connection_created.connect(shorten)
    connection.close()
    try:
        yield
    finally:
        connection_created.disconnect(shorten)
        connection.close()


@contextmanager
def write_locked() -> Iterator[sqlite3.Connection]:
    """The test database's write lock, held by another connection (as by another process)."""
    other = sqlite3.connect(connection.settings_dict["NAME"], isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        other.close()  # (rolls back, if the test did not)


def counted(fn: Callable[[], Any], attempts: list[int]) -> Callable[[], Any]:
    def attempt() -> Any:
        attempts.append(len(attempts) + 1)
        return fn()

    return attempt


def db_messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "scheduler.db" and r.levelno == level
    ]


# -- is_transient: outages and errors that are not ------------------------------------------


def test_a_locked_sqlite_database_is_an_outage(impatient: None) -> None:
    with write_locked(), pytest.raises(OperationalError) as locked:
        new_run()
    assert str(locked.value) == "database is locked"
    assert db.is_transient(locked.value)
    new_run()  # once the other writer is done, the write goes through


@pytest.mark.django_db(transaction=True)
def test_a_unique_violation_is_not_an_outage() -> None:
    new_run()
    with pytest.raises(IntegrityError) as duplicate:
        new_run()
    assert not db.is_transient(duplicate.value)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM scheduler_not_migrated",
        "SELECT not_migrated FROM scheduler_jobrun",
        "INSERT INTO scheduler_jobrun (not_migrated) VALUES (1)",
    ],
    ids=["no such table", "no such column", "has no column named"],
)
def test_sqlite_errors_of_a_database_not_migrated_are_not_outages(sql: str) -> None:
    """SQLite reports them as OperationalError, like a locked database: a project that was
    not migrated must fail at once, not be waited out."""
    with pytest.raises(OperationalError) as missing, connection.cursor() as cursor:
        cursor.execute(sql)
    assert not db.is_transient(missing.value)


# -- retrying --------------------------------------------------------------------------------


def test_retrying_waits_until_the_other_writer_is_done(
    impatient: None, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []
    with write_locked() as other:

        def write() -> JobRun:
            if len(attempts) == 3:
                other.rollback()  # the other writer is done
            return new_run()

        with caplog.at_level(logging.WARNING, logger="scheduler.db"):
            run = db.retrying(counted(write, attempts), "write a run", timeout=60)
    assert attempts == [1, 2, 3]
    assert JobRun.objects.get().pk == run.pk
    assert db_messages(caplog, logging.WARNING) == [
        "Database unavailable while trying to write a run (attempt 1), retrying: database is locked"
    ]


def test_retrying_gives_up_after_its_timeout_raising_the_error(
    impatient: None, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[int] = []
    with (
        write_locked(),
        caplog.at_level(logging.WARNING, logger="scheduler.db"),
        pytest.raises(OperationalError, match="^database is locked$"),
    ):
        db.retrying(counted(new_run, attempts), "write a run", timeout=1.0)
    assert len(attempts) >= 2  # it did try again before giving up
    assert not JobRun.objects.exists()
    assert db_messages(caplog, logging.ERROR) == [
        "Database unavailable while trying to write a run; giving up: database is locked"
    ]


@pytest.mark.parametrize("when", ["after a failure", "while waiting"])
def test_retrying_stops_at_once_when_told(
    impatient: None, caplog: pytest.LogCaptureFixture, when: str
) -> None:
    """A scheduler told to stop does not wait for the database (``should_stop`` is looked
    at after each failure, and while waiting for the next try)."""
    attempts: list[int] = []
    looks: list[int] = []

    def should_stop() -> bool:
        looks.append(1)
        return when == "after a failure" or len(looks) > 1

    with (
        write_locked(),
        caplog.at_level(logging.WARNING, logger="scheduler.db"),
        pytest.raises(OperationalError, match="^database is locked$"),
    ):
        db.retrying(counted(new_run, attempts), "write a run", timeout=10, should_stop=should_stop)
    assert attempts == [1]
    expected = {
        "after a failure": "Database unavailable while trying to write a run; giving up: "
        "database is locked",
        "while waiting": "Stopped while trying to write a run: database is locked",
    }
    assert db_messages(caplog, logging.ERROR) == [expected[when]]


def missing_table() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM scheduler_not_migrated")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("fn", "error"),
    [(new_run, IntegrityError), (missing_table, OperationalError)],
    ids=["unique violation", "no such table"],
)
def test_retrying_does_not_retry_what_is_not_an_outage(
    fn: Callable[[], Any], error: type[Exception]
) -> None:
    new_run()
    attempts: list[int] = []
    with pytest.raises(error):
        db.retrying(counted(fn, attempts), "write a run", timeout=60)
    assert attempts == [1]


# -- writing: SQLite's one writer --------------------------------------------------------------

WRITERS = """
import threading
from scheduler import db

inside = threading.Event()

def second_writer():
    with db.writing():
        inside.set()

with db.writing():
    thread = threading.Thread(target=second_writer)
    thread.start()
    together = inside.wait(0.2)
thread.join()
print("together" if together else "in turn")
"""


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_env(request: pytest.FixtureRequest, tmp_path: Path) -> SchedulerEnv:
    """A database without tables, of each kind: the default database of the subprocesses."""
    if request.param == "sqlite":
        return SchedulerEnv(tmp_path)
    server: PostgresServer = request.getfixturevalue("pg_server")
    return PgSchedulerEnv(tmp_path, server, f"db_{uuid.uuid4().hex[:10]}")


def shell(env: SchedulerEnv, code: str) -> str:
    """What ``code`` prints, run by ``manage.py shell`` on ``env``'s database."""
    result = env.manage("shell", "--no-imports", "-c", code, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_on_sqlite_the_writers_of_a_process_take_turns_and_not_elsewhere(
    empty_env: SchedulerEnv,
) -> None:
    expected = "together" if isinstance(empty_env, PgSchedulerEnv) else "in turn"
    assert shell(empty_env, WRITERS) == f"{expected}\n"


# -- check_migrated ------------------------------------------------------------------------------

CHECK_MIGRATED = """
from scheduler import db
try:
    db.check_migrated()
except db.NotMigrated as exc:
    print(exc)
else:
    print("migrated")
"""


def scheduler_migrations() -> list[str]:
    return sorted(path.stem for path in MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.py"))


@pytest.mark.django_db
def test_a_migrated_database_passes_the_check() -> None:
    db.check_migrated()


def test_the_check_names_what_a_database_without_tables_lacks_in_one_line(
    empty_env: SchedulerEnv,
) -> None:
    import django_apscheduler

    theirs = Path(django_apscheduler.__file__).parent / "migrations"
    count = len(scheduler_migrations()) + len(list(theirs.glob("[0-9][0-9][0-9][0-9]_*.py")))
    assert shell(empty_env, CHECK_MIGRATED) == (
        f"The database 'default' lacks {count} migration(s) of the scheduler "
        "(django_apscheduler.0001_initial, django_apscheduler.0002_auto_20180412_0758, "
        f"django_apscheduler.0003_auto_20200716_1632, …, scheduler.{scheduler_migrations()[-1]}"
        "); run: python manage.py migrate\n"
    )


def test_the_check_names_the_migrations_a_database_has_not_run_yet(scheduler_env: SchedulerEnv):
    """A project upgraded without ``migrate``: the scheduler's last two migrations not run."""
    names = scheduler_migrations()
    result = scheduler_env.manage("migrate", "scheduler", names[-3], "-v", "0", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert shell(scheduler_env, CHECK_MIGRATED) == (
        f"The database 'default' lacks 2 migration(s) of the scheduler (scheduler.{names[-2]}, "
        f"scheduler.{names[-1]}); run: python manage.py migrate\n"
    )
    result = scheduler_env.manage("migrate", "-v", "0", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert shell(scheduler_env, CHECK_MIGRATED) == "migrated\n"


# -- PostgreSQL: a server that goes away ----------------------------------------------------------

OUTAGE = """
import sys
from django.db import connection
from scheduler import db

def select_one():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        return cursor.fetchone()[0]

print("connected", select_one(), flush=True)
sys.stdin.readline()  # the test stops the server
try:
    db.retrying(select_one, "read", timeout=0.5)
except Exception as exc:
    verdict = "transient" if db.is_transient(exc) else "final"
    print("gave up:", type(exc).__name__, verdict, flush=True)
told = []

def waiting():
    if not told:
        told.append(True)
        print("waiting", flush=True)  # the test starts the server again
    return False

print("got", db.retrying(select_one, "read", timeout=60, should_stop=waiting), flush=True)
"""

NOT_OUTAGES = """
from django.db import connection
from scheduler import db

with connection.cursor() as cursor:
    cursor.execute("CREATE TABLE fence (job_id text, at timestamptz, UNIQUE (job_id, at))")
    cursor.execute("INSERT INTO fence VALUES ('t.job', '2030-05-01T12:00:00Z')")
for name, sql in [
    ("unique violation", "INSERT INTO fence VALUES ('t.job', '2030-05-01T12:00:00Z')"),
    ("missing table", "SELECT * FROM scheduler_jobrun"),
    ("missing column", "SELECT not_migrated FROM fence"),
]:
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
    except Exception as exc:
        print(f"{name}:", type(exc).__name__, "transient" if db.is_transient(exc) else "final")
"""


@pytest.mark.postgres
def test_on_postgresql_retrying_waits_out_a_stopped_server(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    env = PgSchedulerEnv(tmp_path, pg_server, f"db_{uuid.uuid4().hex[:10]}")
    process = subprocess.Popen(
        [PYTHON, "manage.py", "shell", "--no-imports", "-c", OUTAGE],
        cwd=ROOT,
        env=env.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None
    output: list[str] = []

    def read_until(prefix: str) -> str:
        for line in process.stdout:
            output.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line {prefix!r} in:\n{''.join(output)}")

    try:
        assert read_until("connected") == "connected 1\n"
        pg_server.stop("fast")
        process.stdin.write("\n")
        process.stdin.flush()
        # A stopped server is an outage: waited out for as long as it may take, then raised.
        assert read_until("gave up") == "gave up: OperationalError transient\n"
        read_until("waiting")
        pg_server.start()
        assert read_until("got") == "got 1\n"
        assert process.wait(30) == 0, "".join(output)
    finally:
        process.kill()
        process.wait(10)
        if not pg_server.running:
            pg_server.start()


@pytest.mark.postgres
def test_on_postgresql_a_unique_violation_and_a_missing_table_are_not_outages(
    pg_server: PostgresServer, tmp_path: Path
) -> None:
    env = PgSchedulerEnv(tmp_path, pg_server, f"db_{uuid.uuid4().hex[:10]}")
    assert shell(env, NOT_OUTAGES) == (
        "unique violation: IntegrityError final\n"
        "missing table: ProgrammingError final\n"
        "missing column: ProgrammingError final\n"
    )
