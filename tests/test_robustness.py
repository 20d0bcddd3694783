"""Nothing lost, nothing doubled, whatever the job does: real ``runapscheduler`` processes on
SQLite and on PostgreSQL, with jobs that do awkward but real things.

Each test here failed on the scheduler before the hardening it guards (the
commit that added it says how), and asserts what a user relies on: every run
that started ends in a final status with what it produced; a stop is obeyed;
the limits a job declares hold.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.proc.harness import (
    SchedulerEnv,
    db_text,
    sleep_until_fraction,
    wait_for,
)
from tests.proc.pg import PgSchedulerEnv, PostgresServer, postgres_server

pytestmark = pytest.mark.integration

HOSTILE = "tests.proc.hostile"
FINAL = ("succeeded", "failed", "missed", "skipped", "interrupted", "timed_out")
LIMIT = 65536  # SCHEDULER["MAX_OUTPUT"]


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def make_env(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> SchedulerEnv:
    if kind == "sqlite":
        env = SchedulerEnv(tmp_path)
        env.db_path.write_bytes(request.getfixturevalue("migrated_db").read_bytes())
        return env
    server: PostgresServer = request.getfixturevalue("pg_server")
    if not server.running:
        server.start()
    pg_env = PgSchedulerEnv(tmp_path, server, f"rb_{uuid.uuid4().hex[:10]}")
    pg_env.migrate()
    return pg_env


def cleanup(env: SchedulerEnv) -> None:
    env.cleanup()
    if isinstance(env, PgSchedulerEnv) and not env.server.running:
        env.server.start()


@pytest.fixture(params=["sqlite", "postgres"])
def scheduler_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SchedulerEnv]:
    """A fresh migrated database of each kind; every process started on it is killed after.

    Named like conftest.py's fixture, so that a failure report shows the logs and runs.
    """
    env = make_env(request.param, request, tmp_path)
    try:
        yield env
    finally:
        cleanup(env)


@pytest.fixture
def pg_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PgSchedulerEnv]:
    """A database server the tests can stop and start: PostgreSQL."""
    env = make_env("postgres", request, tmp_path)
    assert isinstance(env, PgSchedulerEnv)
    try:
        yield env
    finally:
        cleanup(env)


def request_runs(env: SchedulerEnv, job_ids: list[str]) -> list[int]:
    """Run-now requests for several jobs, as the admin makes them, in one transaction:
    the scheduler picks them up together, so their results are written together. Returns
    the run ids, in the order of ``job_ids``."""
    base = datetime.now(UTC)
    times = [base + timedelta(microseconds=i) for i in range(len(job_ids))]
    sql = (
        'INSERT INTO scheduler_jobrun (job_id, job_name, status, "trigger", scheduled_at, '
        "hostname, instance, requested_by, exception, traceback, output) VALUES "
        + ", ".join(["(?, ?, 'queued', 'manual', ?, '', '', 'test', '', '', '')"] * len(job_ids))
    )
    params: list[Any] = []
    for job_id, at in zip(job_ids, times, strict=True):
        params += [job_id, job_id, at if isinstance(env, PgSchedulerEnv) else db_text(at)]
    env.execute(sql, tuple(params))
    by_time = {r["scheduled_at"]: r["id"] for r in env.runs() if r["trigger"] == "manual"}
    return [by_time[at] for at in times]


def run_row(env: SchedulerEnv, run_id: int) -> dict[str, Any]:
    (row,) = [r for r in env.runs() if r["id"] == run_id]
    return row


def finished(env: SchedulerEnv, run_ids: list[int], timeout: float = 30) -> dict[int, dict]:
    def done() -> dict[int, dict] | None:
        rows = {r["id"]: r for r in env.runs() if r["id"] in run_ids}
        if len(rows) == len(run_ids) and all(r["status"] in FINAL for r in rows.values()):
            return rows
        return None

    return wait_for(done, timeout, f"runs {run_ids} in a final status", interval=0.2)


# -- what a job produces --------------------------------------------------------------------------


def test_awkward_text_is_stored_and_costs_no_run_its_result(scheduler_env: SchedulerEnv) -> None:
    """Lone surrogates, NUL characters, raw bytes, megabytes, an exception whose str()
    raises, a log record that cannot be formatted: every run ends with its real outcome
    and what it printed, escaped where the database cannot store it, capped."""
    env = scheduler_env
    proc = env.start(HOSTILE)
    jobs = ["surrogates", "nul", "unprintable", "huge", "badlog", "fine"]
    ids = request_runs(env, [f"hostile.{job}" for job in jobs])
    rows = {r["job_id"].removeprefix("hostile."): r for r in finished(env, ids).values()}
    assert proc.stop() == 0

    surrogates = rows["surrogates"]
    assert surrogates["status"] == "failed"
    assert surrogates["exception"] == "FileNotFoundError: no such file: report-\\udcff.csv"
    assert "opening report-\\udcff.csv\n" in surrogates["output"]
    assert "WARNING tests.proc.hostile: cannot read report-\\udcff.csv" in surrogates["output"]
    assert surrogates["traceback"].rstrip().endswith(surrogates["exception"])

    nul = rows["nul"]
    assert (nul["status"], nul["exception"]) == ("failed", "ValueError: bad\\x00value")
    assert "before\\x00after\n" in nul["output"]
    # Bytes written to sys.stdout.buffer are kept, what is not UTF-8 as escapes.
    assert "raw bytes \\xff\\xfe and \\x00 NUL\n" in nul["output"]

    unprintable = rows["unprintable"]
    assert unprintable["status"] == "failed"
    assert unprintable["exception"] == (
        "tests.proc.hostile.UnprintableError: <str() of the exception raised RuntimeError>"
    )
    assert "raise UnprintableError()" in unprintable["traceback"]

    huge = rows["huge"]
    assert huge["status"] == "failed"
    assert huge["output"].startswith("[… ") and huge["output"].endswith("the end of the output\n")
    assert len(huge["output"]) <= LIMIT + 100
    assert huge["exception"].startswith("RuntimeError: mmmm")
    assert huge["exception"].endswith("more characters not kept …]")
    assert len(huge["exception"]) <= LIMIT + 100 and len(huge["traceback"]) <= LIMIT + 100
    assert huge["traceback"].rstrip().endswith("m the end of the message")

    badlog = rows["badlog"]
    assert badlog["status"] == "succeeded"
    assert "could not be formatted" in badlog["output"] and "still here\n" in badlog["output"]
    assert (rows["fine"]["status"], rows["fine"]["output"]) == ("succeeded", "all good\n")
    # What the job did is what the rows say: every job ran once.
    starts = [m.split()[1] for m in env.marks() if m.startswith("start ")]
    assert sorted(starts) == sorted(f"hostile.{job}" for job in jobs)


def teach_the_database_to_refuse(env: SchedulerEnv) -> None:
    """A trigger that refuses a run's output containing 'forbidden': a value the database
    will not store, for a reason the scheduler cannot foresee."""
    if isinstance(env, PgSchedulerEnv):
        env.execute(
            "CREATE FUNCTION refuse_forbidden() RETURNS trigger AS $$ BEGIN "
            "IF NEW.output LIKE '%forbidden%' THEN "
            "RAISE EXCEPTION 'forbidden output' USING ERRCODE = 'check_violation'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        env.execute(
            "CREATE TRIGGER refuse_forbidden BEFORE UPDATE ON scheduler_jobrun "
            "FOR EACH ROW EXECUTE FUNCTION refuse_forbidden()"
        )
    else:
        env.execute(
            "CREATE TRIGGER refuse_forbidden BEFORE UPDATE ON scheduler_jobrun "
            "WHEN NEW.output LIKE '%forbidden%' "
            "BEGIN SELECT RAISE(ABORT, 'forbidden output'); END"
        )


def test_a_result_the_database_refuses_is_written_row_by_row(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    teach_the_database_to_refuse(env)
    proc = env.start(HOSTILE)
    refused_id, fine_id, badlog_id = request_runs(
        env, ["hostile.refused", "hostile.fine", "hostile.badlog"]
    )
    rows = finished(env, [refused_id, fine_id, badlog_id])
    assert proc.stop() == 0

    refused = rows[refused_id]
    assert refused["status"] == "failed"
    assert refused["exception"].startswith("The scheduler could not store this run's result (")
    assert "forbidden output" in refused["exception"]
    assert refused["exception"].endswith("the run itself ended succeeded.")
    assert refused["finished_at"] is not None and refused["duration"] is not None
    # Written with it, the others keep their own results.
    assert (rows[fine_id]["status"], rows[fine_id]["output"]) == ("succeeded", "all good\n")
    assert rows[badlog_id]["status"] == "succeeded"
    assert "its result cannot be stored as it is: forbidden output" in proc.log()


# -- the database away ----------------------------------------------------------------------------


def test_a_result_is_written_when_the_database_comes_back_after_the_retry_timeout(
    pg_env: PgSchedulerEnv,
) -> None:
    env = pg_env
    options = {"LEASE_SECONDS": 2, "HEARTBEAT_INTERVAL": 1, "DB_RETRY_TIMEOUT": 2}
    proc = env.start(HOSTILE, PROC_SLOW_SECONDS=1.5, **options)
    (run_id,) = request_runs(env, ["hostile.slow"])
    wait_for(lambda: run_row(env, run_id)["status"] == "running", 10, "the run to start")
    env.server.stop()  # the run ends while the database is away, for 3 retry timeouts
    time.sleep(6)
    env.server.start()
    row = wait_for(lambda: (r := run_row(env, run_id))["status"] in FINAL and r, 30, "the result")
    assert row["status"] == "succeeded", row
    assert row["duration"] == pytest.approx(1.5, abs=0.3)
    assert proc.alive()
    assert proc.stop() == 0


def test_a_stop_while_the_database_is_away_is_bounded_and_settled_at_the_next_start(
    pg_env: PgSchedulerEnv,
) -> None:
    env = pg_env
    options = {"LEASE_SECONDS": 2, "HEARTBEAT_INTERVAL": 1, "SHUTDOWN_GRACE": 2}
    proc = env.start(HOSTILE, PROC_SLOW_SECONDS=30, **options)
    (run_id,) = request_runs(env, ["hostile.slow"])
    wait_for(lambda: run_row(env, run_id)["status"] == "running", 10, "the run to start")
    env.server.stop()
    sent = proc.signal(signal.SIGTERM)
    proc.wait(2 + 5 + 5)  # SHUTDOWN_GRACE + the settle time + a margin
    stopped_in = time.monotonic() - sent
    env.server.start()
    # The row could not be written meanwhile; the next start on this host settles it.
    assert run_row(env, run_id)["status"] == "running"
    again = env.start(HOSTILE, **options)
    row = wait_for(lambda: (r := run_row(env, run_id))["status"] in FINAL and r, 10, "settled")
    assert row["status"] == "interrupted"
    assert "died" in row["exception"]
    assert stopped_in < 2 + 5 + 2
    assert again.stop() == 0


def test_after_an_outage_the_first_catch_up_runs_and_nothing_is_skipped(
    pg_env: PgSchedulerEnv,
) -> None:
    """A max_instances=1 job every second, the database away for 3 seconds (less than
    the lease): the fire times that passed are recorded missed, one catch-up runs, no
    fire time is recorded skipped, and no row is left without a final status."""
    env = pg_env
    proc = env.start("tests.proc.clock", LEASE_SECONDS=10, HEARTBEAT_INTERVAL=1)
    wait_for(lambda: len(env.runs("clock.tick", status="succeeded")) >= 2, 10, "2 ticks")
    sleep_until_fraction(0.5)
    env.server.stop()
    time.sleep(3)
    env.server.start()
    back = datetime.now(UTC)
    wait_for(
        lambda: [
            r for r in env.runs("clock.tick") if r["scheduled_at"] > back + timedelta(seconds=2)
        ],
        15,
        "runs after the outage",
    )
    assert proc.stop() == 0
    runs = env.runs("clock.tick")
    statuses = {r["status"] for r in runs}
    assert "skipped" not in statuses and "running" not in statuses, env.dump()
    times = [r["scheduled_at"] for r in runs]
    assert len(times) == len(set(times))
    expected = [times[0] + timedelta(seconds=i) for i in range(len(times))]
    assert times == expected, "a fire time without a row"
    missed = [r for r in runs if r["status"] == "missed"]
    assert len(missed) >= 2 and all("Coalesced" in r["exception"] for r in missed)
    catch_up = next(
        r for r in runs if r["scheduled_at"] == missed[-1]["scheduled_at"] + timedelta(seconds=1)
    )
    assert catch_up["status"] == "succeeded"
    assert len([m for m in env.marks() if m.startswith("clock.tick ")]) == len(
        [r for r in runs if r["status"] == "succeeded"]
    )


# -- stopping -------------------------------------------------------------------------------------


def test_no_run_starts_after_a_stop_signal(scheduler_env: SchedulerEnv) -> None:
    """Two hundred jobs due every second, SIGTERM just after a second begins, while the
    scheduler hands out that second's runs: not one run starts after the signal."""
    env = scheduler_env
    # A long poll interval: the stop used to wait for the control thread's LISTEN (on
    # PostgreSQL) before pausing the main loop, which kept starting runs meanwhile.
    proc = env.start("tests.proc.many,tests.proc.clock", POLL_INTERVAL=5)
    wait_for(lambda: len(env.runs("clock.tick", status="succeeded")) >= 2, 15, "2 ticks")
    sleep_until_fraction(0.02)
    sent = time.time()
    proc.signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    late = [
        r
        for r in env.runs()
        if r["status"] == "succeeded" and r["started_at"].timestamp() > sent + 0.05
    ]
    assert late == [], f"{len(late)} runs started after the stop signal"
    started_marks = [float(m.split()[2]) for m in env.marks() if m.startswith("clock.tick ")]
    assert max(started_marks) < sent + 0.05
    assert not env.runs(status="running")


def test_every_fire_time_of_a_stopped_submission_gets_a_row(scheduler_env: SchedulerEnv) -> None:
    """coalesce=False after downtime hands a worker several fire times at once; a stop
    during the first one leaves the others recorded missed, not without a row."""
    env = scheduler_env
    first = env.start("tests.proc.backlog", SHUTDOWN_GRACE=10)
    wait_for(lambda: env.runs("backlog.every"), 10, "a first run")
    assert first.stop(timeout=20) == 0
    time.sleep(3.5)  # three fire times or more pass
    second = env.start("tests.proc.backlog", SHUTDOWN_GRACE=10)
    wait_for(lambda: env.runs("backlog.every", status="running"), 10, "the backlog started")
    second.signal(signal.SIGTERM)
    assert second.wait(30) == 0
    runs = env.runs("backlog.every")
    assert not [r for r in runs if r["status"] == "running"]
    times = [r["scheduled_at"] for r in runs]
    assert len(times) == len(set(times)), "a fire time recorded twice"
    expected = [times[0] + timedelta(seconds=i) for i in range(len(times))]
    assert times == expected, f"fire times without a row: {sorted(set(expected) - set(times))}"
    assert any(r["exception"].startswith("Missed: the scheduler stopped") for r in runs)
    # The stored next run time is past every recorded fire time: nothing is run twice later.
    assert env.stored_jobs()["backlog.every"] > times[-1]


def test_the_process_leaves_though_a_job_left_a_thread_behind(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(HOSTILE, SHUTDOWN_GRACE=2)
    (run_id,) = request_runs(env, ["hostile.leaves_a_thread"])
    assert finished(env, [run_id])[run_id]["status"] == "succeeded"
    sent = proc.signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    assert time.monotonic() - sent < 5


def test_a_stop_signal_during_start_up_retries_is_obeyed(tmp_path: Path) -> None:
    """A database that cannot be reached at start is waited for, but a SIGTERM ends the
    wait at once (it used to be ignored for DB_RETRY_TIMEOUT, ten minutes)."""
    env = SchedulerEnv(tmp_path)
    env.db_path = tmp_path / "missing-dir" / "db.sqlite3"
    proc = env.start(HOSTILE, wait=None)
    wait_for(lambda: "Database unavailable" in proc.log(), 20, "a retry")
    sent = proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert time.monotonic() - sent < 3
    assert "before it was up" in proc.log()
    assert "Traceback" not in proc.log()


@pytest.mark.parametrize(
    "command",
    [["runjob", "hostile.fine"], ["prunehistory"], ["importapschedulerhistory"]],
    ids=["runjob", "prunehistory", "importapschedulerhistory"],
)
def test_a_database_that_cannot_be_opened_fails_a_command_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    """Not a traceback (Django 6 also opens the database in its checks before handle())."""
    env = SchedulerEnv(tmp_path)
    env.db_path = tmp_path / "missing-dir" / "db.sqlite3"
    result = env.manage(*command, modules=HOSTILE, timeout=90, DB_RETRY_TIMEOUT=15)
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "Traceback" not in text
    (line,) = [line for line in text.splitlines() if line.startswith("CommandError")]
    assert line == "CommandError: Database 'default' unavailable: unable to open database file"


# -- errors that are not outages ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"),
    [(["runapscheduler"], 1), (["runjob", "hostile.fine"], 1), (["schedulerstatus"], 1)],
    ids=["runapscheduler", "runjob", "schedulerstatus"],
)
def test_a_database_without_the_tables_fails_at_once_in_one_line(
    tmp_path: Path, command: list[str], code: int
) -> None:
    env = SchedulerEnv(tmp_path)
    started = time.monotonic()
    result = env.manage(*command, modules=HOSTILE, timeout=60)
    assert time.monotonic() - started < 20
    assert result.returncode == code, result.stdout + result.stderr
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    (line,) = [line for line in text.splitlines() if "migration" in line]
    assert "scheduler.0001_initial" in line or "django_apscheduler.0001_initial" in line
    assert "python manage.py migrate" in line


# -- runs as declared -----------------------------------------------------------------------------


def slow_spans(env: SchedulerEnv) -> list[tuple[float, float]]:
    """(start, end) wall-clock times of the runs of hostile.slow, from its marks."""
    starts: dict[str, float] = {}
    spans = []
    for mark in env.marks():
        kind, job, at, clock = mark.split()
        if job != "hostile.slow":
            continue
        if kind == "start":
            starts[at] = float(clock)
        else:
            spans.append((starts[at], float(clock)))
    return sorted(spans)


def test_run_now_requests_wait_their_turn_under_max_instances(scheduler_env: SchedulerEnv) -> None:
    """Three run-now requests for a max_instances=1 job at once (a double click and
    more): each runs, one after another, never two at the same time."""
    env = scheduler_env
    proc = env.start(HOSTILE, PROC_SLOW_SECONDS=1, POLL_INTERVAL=0.2)
    run_ids = request_runs(env, ["hostile.slow"] * 3)
    # While the first runs, the others stay queued.
    wait_for(lambda: run_row(env, run_ids[0])["status"] == "running", 10, "the first run")
    assert [run_row(env, i)["status"] for i in run_ids[1:]] == ["queued", "queued"]
    rows = finished(env, run_ids)
    assert proc.stop() == 0
    assert {row["status"] for row in rows.values()} == {"succeeded"}
    spans = slow_spans(env)
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"runs overlapped: {spans}"


def test_scheduled_fire_times_give_way_to_a_waiting_run_now(scheduler_env: SchedulerEnv) -> None:
    """A job due every second that runs for three seconds (max_instances=1): a run-now
    request waits for the running one, then runs before the next fire time; the fire
    times meanwhile are recorded skipped; runs never overlap."""
    env = scheduler_env
    proc = env.start("tests.proc.slow", PROC_SLOW_SECONDS=2, POLL_INTERVAL=0.2)
    env.started_run("proc.slow", "slow-start", 10)
    run_id, _ = env.request_run("proc.slow")
    row = wait_for(lambda: (r := run_row(env, run_id))["status"] in FINAL and r, 20, "the run")
    assert proc.stop(timeout=20) == 0
    assert row["status"] == "succeeded"
    runs = [r for r in env.runs("proc.slow") if r["status"] in ("succeeded", "interrupted")]
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"runs overlapped: {spans}"
    waited = [r for r in env.runs("proc.slow", status="skipped") if "by hand" in r["exception"]]
    assert waited, "no fire time gave way to the waiting request"


def test_runjob_waits_for_a_running_instance_and_the_schedule_counts_its_run(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(HOSTILE, PROC_SLOW_SECONDS=2, POLL_INTERVAL=0.2)
    (first,) = request_runs(env, ["hostile.slow"])
    wait_for(lambda: run_row(env, first)["status"] == "running", 10, "the requested run")
    result = env.manage("runjob", "hostile.slow", modules=HOSTILE, PROC_SLOW_SECONDS=1)
    assert result.returncode == 0, result.stdout + result.stderr
    assert proc.stop() == 0
    spans = slow_spans(env)
    assert len(spans) == 2
    assert spans[1][0] >= spans[0][1], f"runjob overlapped the running instance: {spans}"
    mine = [r for r in env.runs("hostile.slow") if r["requested_by"].startswith("runjob")]
    assert len(mine) == 1 and mine[0]["status"] == "succeeded"

    busy = env.start(HOSTILE, PROC_SLOW_SECONDS=8, POLL_INTERVAL=0.2, SHUTDOWN_GRACE=1)
    (third,) = request_runs(env, ["hostile.slow"])
    wait_for(lambda: run_row(env, third)["status"] == "running", 10, "another run")
    result = env.manage("runjob", "--no-wait", "hostile.slow", modules=HOSTILE)
    assert result.returncode == 3, result.stdout + result.stderr
    skipped = env.runs("hostile.slow", status="skipped")
    assert len(skipped) == 1 and skipped[0]["requested_by"].startswith("runjob")
    assert busy.stop() == 0


# -- processes and rows ---------------------------------------------------------------------------


def test_a_reused_pid_does_not_keep_a_dead_runs_row_running(scheduler_env: SchedulerEnv) -> None:
    """In a container every process is pid 1: a row left by a dead process whose pid a
    live process has now is recognised as an orphan by the start time."""
    env = scheduler_env
    other = subprocess.Popen(["sleep", "120"])
    try:
        host = socket.gethostname()
        before = datetime.now(UTC) - timedelta(hours=1)
        after = datetime.now(UTC) + timedelta(seconds=5)
        stamp = (lambda at: at) if isinstance(env, PgSchedulerEnv) else db_text
        env_rows = []
        for at in (before, after):
            values = {
                "job_id": "hostile.fine",
                "job_name": "fine",
                "status": "running",
                "trigger": "manual",
                "scheduled_at": stamp(at),
                "started_at": stamp(at),
                "hostname": host,
                "pid": other.pid,
            }
            env_rows.append(insert_row(env, values))
        proc = env.start(HOSTILE)
        dead, alive = (run_row(env, pk) for pk in env_rows)
        assert dead["status"] == "interrupted" and "died" in dead["exception"]
        assert alive["status"] == "running"
        assert proc.stop() == 0
    finally:
        other.kill()
        other.wait()


def insert_row(env: SchedulerEnv, values: dict[str, Any]) -> int:
    values = {
        "instance": "",
        "requested_by": "",
        "exception": "",
        "traceback": "",
        "output": "",
        **values,
    }
    columns = ", ".join(f'"{name}"' for name in values)
    marks = ", ".join("?" for _ in values)
    (row,) = env.query(
        f"INSERT INTO scheduler_jobrun ({columns}) VALUES ({marks}) RETURNING id",
        tuple(values.values()),
    )
    return row["id"]


def test_a_running_row_of_this_scheduler_with_no_thread_is_swept(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(HOSTILE, HEARTBEAT_INTERVAL=1, POLL_INTERVAL=0.2)
    (me,) = [r["id"] for r in env.query("SELECT id FROM scheduler_schedulerinstance")]
    at = datetime.now(UTC)
    stamp = at if isinstance(env, PgSchedulerEnv) else db_text(at)
    lost = insert_row(
        env,
        {
            "job_id": "hostile.fine",
            "job_name": "fine",
            "status": "running",
            "trigger": "schedule",
            "scheduled_at": stamp,
            "started_at": stamp,
            "hostname": socket.gethostname(),
            "pid": proc.pid,
            "instance": me,
        },
    )
    row = wait_for(lambda: (r := run_row(env, lost))["status"] != "running" and r, 20, "the sweep")
    assert row["status"] == "interrupted" and "no thread" in row["exception"]
    assert proc.stop() == 0


def test_a_planted_pickle_in_the_job_table_is_never_run(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    first = env.start("tests.proc.clock")
    wait_for(lambda: env.runs("clock.tick", status="succeeded"), 10, "a tick")
    assert first.stop() == 0
    planted = env.dir / "planted"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {planted}",))

    state = pickle.dumps(Planted())
    past = datetime.now(UTC) - timedelta(seconds=30)
    stamp = past if isinstance(env, PgSchedulerEnv) else db_text(past)
    env.execute("UPDATE django_apscheduler_djangojob SET job_state = ?", (state,))
    env.execute(
        "INSERT INTO django_apscheduler_djangojob (id, next_run_time, job_state) VALUES (?, ?, ?)",
        ("planted.job", stamp, state),
    )
    second = env.start("tests.proc.clock")
    restarted = datetime.now(UTC)
    wait_for(
        lambda: [
            r for r in env.runs("clock.tick", status="succeeded") if r["scheduled_at"] > restarted
        ],
        10,
        "ticks after the restart",
    )
    assert second.stop() == 0
    assert not planted.exists()
    assert "planted.job" not in env.stored_jobs()
    assert "Job 'planted.job' is no longer in code" in second.log()
