"""High availability: several ``runapscheduler`` processes on one database.

Real processes (tests/proc/harness.py) on a real PostgreSQL server started by
the suite (tests/proc/pg.py) and, for the two-process case, on SQLite. The jobs
(tests/proc/ha_jobs.py) append "job_id fire_time pid" to a file at each call,
so the tests count executions, not only rows. Each test prints what it
measured (failover seconds, duplicate and missed counts; shown with ``-s``)
and records it as a property of the test (in the JUnit XML report).

Short leases (LEASE_SECONDS=4, HEARTBEAT_INTERVAL=1) keep the suite fast;
the kill -9 test uses the defaults (15 s and 5 s).
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.proc.harness import (
    STARTED_LINE,
    SchedulerEnv,
    SchedulerProcess,
    parse_dt,
    sleep_until_fraction,
    wait_for,
)
from tests.proc.pg import PgSchedulerEnv, PostgresServer, postgres_server

pytestmark = pytest.mark.integration

MODULES = "tests.proc.ha_jobs"
FAST = ("ha.a", "ha.b", "ha.c")
SLOW = "ha.slow"
SLOW_EVERY = 5  # seconds between the slow job's fire times
SECOND = timedelta(seconds=1)

LEASE = 4
SHORT = {"LEASE_SECONDS": LEASE, "HEARTBEAT_INTERVAL": 1, "SHUTDOWN_GRACE": 5}
DEFAULT_LEASE = 15  # SCHEDULER["LEASE_SECONDS"] when not overridden
DEFAULT_HEARTBEAT = 5

ELECTED = "is now the active one"
DEMOTED = "lost the lease: standing by"


def now() -> datetime:
    return datetime.now(UTC)


def ceil_second(moment: datetime) -> datetime:
    whole = moment.replace(microsecond=0)
    return whole if whole == moment else whole + SECOND


def report(record_property: Callable[[str, Any], None], title: str, **figures: Any) -> None:
    """Print the measured figures (shown with -s) and record them in the test report."""
    for name, value in figures.items():
        record_property(name, value)
    shown = ", ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()
    )
    print(f"\n[HA] {title}: {shown}")


# -- reading the database -------------------------------------------------------------------


def as_dt(value: Any) -> datetime | None:
    """A datetime column as read by sqlite3 (text) or psycopg (datetime) -> aware datetime."""
    return parse_dt(value) if isinstance(value, str) else value


def instances(env: SchedulerEnv) -> list[dict[str, Any]]:
    rows = env.query("SELECT * FROM scheduler_schedulerinstance")
    for row in rows:
        for column in ("started_at", "heartbeat_at", "stopped_at"):
            row[column] = as_dt(row[column])
    return rows


def lease_row(env: SchedulerEnv) -> dict[str, Any] | None:
    rows = env.query("SELECT * FROM scheduler_lease")
    if not rows:
        return None
    row = rows[0]
    row["expires_at"] = as_dt(row["expires_at"])
    return row


def instance_id(env: SchedulerEnv, proc: SchedulerProcess) -> str:
    """The SchedulerInstance id of a process (it creates its row at its first heartbeat)."""

    def find() -> str | None:
        return next((r["id"] for r in instances(env) if r["pid"] == proc.pid), None)

    return wait_for(find, 10, f"the instance row of pid {proc.pid}", interval=0.1)


def fresh_active(env: SchedulerEnv, lease: float) -> list[str]:
    """Instances that say they are active and heartbeated within the lease."""
    cutoff = now() - timedelta(seconds=lease)
    return [
        r["id"]
        for r in instances(env)
        if r["role"] == "active" and r["stopped_at"] is None and r["heartbeat_at"] >= cutoff
    ]


class Watch:
    """Samples, while the schedulers run, who is active and who holds the lease."""

    def __init__(self, env: SchedulerEnv, lease: float) -> None:
        self.env = env
        self.lease = lease
        self.samples: list[tuple[datetime, list[str], str | None, int | None]] = []

    def sample(self) -> None:
        lease = lease_row(self.env)
        self.samples.append(
            (
                now(),
                fresh_active(self.env, self.lease),
                lease["holder"] if lease else None,
                lease["token"] if lease else None,
            )
        )

    def run(self, seconds: float, processes: Iterable[SchedulerProcess]) -> None:
        """Sample twice a second for ``seconds``; every process must stay alive."""
        processes = list(processes)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sample()
            for proc in processes:
                assert proc.alive(), f"pid {proc.pid} exited:\n{proc.log()}"
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def not_one_active(self, since: datetime | None = None) -> list[tuple[datetime, list[str]]]:
        return [
            (at, active)
            for at, active, _, _ in self.samples
            if (since is None or at >= since) and len(active) != 1
        ]

    def more_than_one_active(self) -> list[tuple[datetime, list[str]]]:
        return [(at, active) for at, active, _, _ in self.samples if len(active) > 1]

    def tokens(self) -> set[int | None]:
        return {token for _, _, _, token in self.samples}


# -- what ran -------------------------------------------------------------------------------


def executions(env: SchedulerEnv) -> list[tuple[str, datetime, int]]:
    """The marks of the job bodies: (job id, fire time, pid), one per call."""
    result = []
    for line in env.marks():
        job_id, fire_time, pid = line.split()
        result.append((job_id, datetime.fromisoformat(fire_time), int(pid)))
    return result


def ran_bodies(env: SchedulerEnv) -> set[tuple[str, datetime]]:
    """(job id, fire time) of every job body that ran to its end."""
    return {(job_id, at) for job_id, at, _ in executions(env)}


def duplicate_rows(runs: list[dict[str, Any]]) -> dict[tuple[str, datetime], int]:
    """(job id, fire time) pairs with more than one row, whatever the trigger and status."""
    counts = Counter((r["job_id"], r["scheduled_at"]) for r in runs)
    return {key: n for key, n in counts.items() if n > 1}


def duplicate_executions(env: SchedulerEnv) -> dict[tuple[str, datetime], int]:
    counts = Counter((job_id, at) for job_id, at, _ in executions(env))
    return {key: n for key, n in counts.items() if n > 1}


def fire_times(start: datetime, end: datetime, every: int = 1) -> list[datetime]:
    """Fire times of a job due every ``every`` seconds (on the minute), start <= t <= end."""
    first = ceil_second(start)
    while first.second % every:
        first += SECOND
    return [first + i * every * SECOND for i in range(int((end - first) / SECOND) // every + 1)]


def by_fire_time(runs: list[dict[str, Any]], job_id: str) -> dict[datetime, list[dict]]:
    rows: dict[datetime, list[dict]] = defaultdict(list)
    for run in runs:
        if run["job_id"] == job_id:
            rows[run["scheduled_at"]].append(run)
    return rows


def not_run_once(
    runs: list[dict[str, Any]], job_id: str, start: datetime, end: datetime, every: int = 1
) -> list[tuple[datetime, list[str]]]:
    """Fire times in [start, end] that do not have exactly one row, succeeded."""
    rows = by_fire_time(runs, job_id)
    return [
        (at, [r["status"] for r in rows[at]])
        for at in fire_times(start, end, every)
        if [r["status"] for r in rows[at]] != ["succeeded"]
    ]


def not_one_row(
    runs: list[dict[str, Any]], job_id: str, start: datetime, end: datetime, every: int = 1
) -> list[tuple[datetime, list[str]]]:
    """Fire times in [start, end] that do not have exactly one row, whatever its status."""
    rows = by_fire_time(runs, job_id)
    return [
        (at, [r["status"] for r in rows[at]])
        for at in fire_times(start, end, every)
        if len(rows[at]) != 1
    ]


def statuses(runs: list[dict[str, Any]], job_ids: Iterable[str], start: datetime, end: datetime):
    job_ids = set(job_ids)
    return Counter(
        r["status"] for r in runs if r["job_id"] in job_ids and start <= r["scheduled_at"] <= end
    )


def assert_marks_match_rows(env: SchedulerEnv, runs: list[dict[str, Any]]) -> None:
    """Every succeeded run of a fast job ran its body once, and no body ran without a row."""
    ran = Counter((job_id, at) for job_id, at, _ in executions(env) if job_id in FAST)
    succeeded = Counter(
        (r["job_id"], r["scheduled_at"])
        for r in runs
        if r["job_id"] in FAST and r["status"] == "succeeded"
    )
    assert ran == succeeded, (
        f"bodies run without a succeeded row: {sorted(ran - succeeded)[:10]}; "
        f"succeeded rows without a run: {sorted(succeeded - ran)[:10]}"
    )


# -- processes ------------------------------------------------------------------------------


def holder_first(env: SchedulerEnv, processes: list[SchedulerProcess]) -> list[SchedulerProcess]:
    """The processes, the lease holder last: stopping standbys first causes no failover."""
    lease = lease_row(env)
    holder = lease["holder"] if lease else None
    pids = {r["id"]: r["pid"] for r in instances(env)}
    return sorted(processes, key=lambda p: pids.get(holder) == p.pid)


def stop_all(env: SchedulerEnv, processes: list[SchedulerProcess]) -> dict[int, int]:
    """SIGTERM each live process (standbys first); pid -> exit code."""
    codes = {}
    for proc in holder_first(env, processes):
        if proc.alive():
            codes[proc.pid] = proc.stop(timeout=15)
        else:
            codes[proc.pid] = proc.popen.returncode
    return codes


def assert_clean_logs(processes: Iterable[SchedulerProcess]) -> None:
    for proc in processes:
        log = proc.log()
        assert "Traceback" not in log, f"a traceback in the log of pid {proc.pid}:\n{log}"
        assert "Error in the leader lease loop" not in log, log


# -- the steady state: N schedulers, no failure -----------------------------------------------


def steady_run(
    env: SchedulerEnv, count: int, seconds: float, record_property, backend: str
) -> None:
    """``count`` schedulers for ``seconds``: each fire time runs exactly once."""
    first = env.start(MODULES, **SHORT)
    leader_up = now()
    leader = instance_id(env, first)
    standbys = [env.start(MODULES, wait=STARTED_LINE, **SHORT) for _ in range(count - 1)]
    processes = [first, *standbys]
    for proc in standbys:
        instance_id(env, proc)

    watch = Watch(env, LEASE)
    watch.run(seconds - (now() - leader_up).total_seconds(), processes)
    cutoff = now()
    codes = stop_all(env, processes)

    runs = env.runs()
    # Fire times from the first whole second after the leader synced its store up to the
    # last one whose runs are surely over before the processes were stopped.
    start, end = ceil_second(leader_up), cutoff.replace(microsecond=0) - SECOND
    window_end = end - (SLOW_EVERY - 1) * SECOND
    dup_rows = duplicate_rows(runs)
    dup_runs = duplicate_executions(env)
    not_once = {job: not_run_once(runs, job, start, end) for job in FAST}
    not_once[SLOW] = not_run_once(runs, SLOW, start, window_end, SLOW_EVERY)
    missed = sum(len(v) for v in not_once.values())
    fast_rows = sum(len(fire_times(start, end)) for _ in FAST)
    elections = sum(p.log().count(ELECTED) for p in processes)
    report(
        record_property,
        f"{count} schedulers on {backend} for {(cutoff - leader_up).total_seconds():.1f} s",
        fire_times_checked=fast_rows,
        rows=len(runs),
        duplicate_rows=len(dup_rows),
        duplicate_executions=len(dup_runs),
        missed=missed,
        samples=len(watch.samples),
        samples_not_one_active=len(watch.not_one_active()),
        elections=elections,
    )

    assert (cutoff - leader_up).total_seconds() >= seconds
    assert dup_rows == {}, dup_rows
    assert dup_runs == {}, dup_runs
    assert {job: bad for job, bad in not_once.items() if bad} == {}
    assert_marks_match_rows(env, runs)
    # Only the first leader ran anything: no failover happened in a healthy cluster.
    in_window = [r for r in runs if start <= r["scheduled_at"] <= end]
    assert {r["instance"] for r in in_window} == {leader}
    assert {pid for job, at, pid in executions(env) if start <= at <= end} == {first.pid}
    # Exactly one active instance at each sample, always the same, holding the same lease.
    assert watch.not_one_active() == []
    assert {tuple(active) for _, active, _, _ in watch.samples} == {(leader,)}
    assert {holder for _, _, holder, _ in watch.samples} == {leader}
    assert len(watch.tokens()) == 1, watch.tokens()
    assert elections == 1
    assert set(codes.values()) == {0}, codes
    assert_clean_logs(processes)


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@pytest.mark.postgres
class TestPostgres:
    @pytest.fixture
    def scheduler_env(
        self, pg_server: PostgresServer, tmp_path: Path, request: pytest.FixtureRequest
    ) -> Iterator[PgSchedulerEnv]:
        """A fresh migrated PostgreSQL database; every process started on it is killed after.

        Named like conftest.py's fixture, so that a failure report shows the logs and runs.
        """
        if not pg_server.running:
            pg_server.start()
        name = re.sub(r"\W+", "_", request.node.name.lower())[:40]
        env = PgSchedulerEnv(tmp_path, pg_server, f"ha_{name}_{uuid.uuid4().hex[:6]}")
        env.migrate()
        try:
            yield env
        finally:
            env.cleanup()
            # Kept with the logs in the test's tmp_path, for a look after the run.
            (tmp_path / "runs.txt").write_text(env.dump() if pg_server.running else "")
            if not pg_server.running:
                pg_server.start()

    def test_grouped_writes_leave_the_rows_one_statement_per_row_would(
        self, scheduler_env: PgSchedulerEnv
    ) -> None:
        result = scheduler_env.manage("shell", "-c", "import tests.proc.pgwrites", timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "won ['pg.0', 'pg.1', 'pg.2', 'pg.3'] ['pg.4']" in result.stdout
        assert "next run time None" in result.stdout
        rows = {row["job_id"]: row for row in scheduler_env.runs()}
        assert rows.keys() == {"pg.0", "pg.1", "pg.2", "pg.3", "pg.4"}
        # Given twice in one group: the later result is the one kept.
        assert (rows["pg.0"]["status"], rows["pg.0"]["exception"]) == ("failed", "second")
        assert rows["pg.0"]["output"] == ""
        # NULL in every row of its group.
        assert rows["pg.1"]["status"] == "interrupted"
        assert rows["pg.1"]["finished_at"] is None and rows["pg.1"]["duration"] is None
        assert (rows["pg.2"]["status"], rows["pg.2"]["duration"], rows["pg.2"]["output"]) == (
            "succeeded",
            0.5,
            "out",
        )
        # Marked missed meanwhile: no result overwrites it.
        assert rows["pg.3"]["status"] == "missed"
        assert rows["pg.4"]["status"] == "running"

    # Three schedulers (two standbys racing for the lease). Two schedulers are the case of
    # test_two_schedulers_on_sqlite_... and of the fleet's, one-off runs' and retries'
    # tests; the run with two here cost 34 s of each leg.
    @pytest.mark.parametrize("count", [3])
    def test_schedulers_run_each_fire_time_exactly_once(
        self, scheduler_env: PgSchedulerEnv, count: int, record_property
    ) -> None:
        steady_run(scheduler_env, count, 30, record_property, "PostgreSQL")

    def test_kill_9_of_the_active_scheduler_during_a_run(
        self, scheduler_env: PgSchedulerEnv, record_property
    ) -> None:
        """Default lease (15 s): a standby takes over within lease + 2 s and marks the
        killed process's run interrupted once its heartbeat is older than the lease."""
        env = scheduler_env
        options = {"SHUTDOWN_GRACE": 5}
        a = env.start(MODULES, **options)
        leader_up = now()
        b = env.start(MODULES, wait=STARTED_LINE, **options)
        id_a, id_b = instance_id(env, a), instance_id(env, b)

        run = wait_for(
            lambda: env.runs(SLOW, status="running"), SLOW_EVERY + 5, "a running slow job"
        )[0]
        assert run["instance"] == id_a
        # Mid-second: no fast job is between its body and the row's update.
        sleep_until_fraction(0.5)
        killed_at = now()
        killed = time.monotonic()
        a.popen.kill()
        a.popen.wait(5)  # reaped: the pid is gone, as after a crash

        takeover_log = takeover_run = None
        deadline = killed + DEFAULT_LEASE + 5
        while (takeover_log is None or takeover_run is None) and time.monotonic() < deadline:
            if takeover_log is None and ELECTED in b.log():
                takeover_log = time.monotonic() - killed
            if takeover_run is None:
                started = [
                    r["started_at"]
                    for r in env.runs()
                    if r["instance"] == id_b and r["started_at"] and r["started_at"] > killed_at
                ]
                if started:
                    takeover_run = (min(started) - killed_at).total_seconds()
            time.sleep(0.05)
        assert takeover_log is not None and takeover_run is not None, b.log()
        holder = lease_row(env)["holder"]

        def final() -> dict | None:
            (row,) = env.runs(id=run["id"])
            return row if row["status"] != "running" else None

        orphan = wait_for(final, DEFAULT_LEASE + DEFAULT_HEARTBEAT + 8, "the killed run ended")
        interrupted_after = (orphan["finished_at"] - killed_at).total_seconds()
        time.sleep(1)
        cutoff = now()
        codes = stop_all(env, [b])

        runs = env.runs()
        start, end = ceil_second(leader_up), cutoff.replace(microsecond=0) - SECOND
        gap = [r for r in runs if r["job_id"] in FAST and r["status"] != "succeeded"]
        report(
            record_property,
            f"kill -9 of the active scheduler (lease {DEFAULT_LEASE} s)",
            takeover_seconds_log=takeover_log,
            takeover_seconds_first_run=takeover_run,
            interrupted_after_seconds=interrupted_after,
            duplicate_rows=len(duplicate_rows(runs)),
            duplicate_executions=len(duplicate_executions(env)),
            fast_statuses=dict(statuses(runs, FAST, start, end)),
            fire_times_without_one_row=sum(len(not_one_row(runs, j, start, end)) for j in FAST),
        )

        assert takeover_log <= DEFAULT_LEASE + 2
        assert takeover_run <= DEFAULT_LEASE + 2
        # The lease is B's. (A's row still says "active" until its heartbeat goes stale.)
        assert holder == id_b
        assert orphan["status"] == "interrupted", orphan
        assert orphan["exception"] == (
            "Interrupted: the scheduler instance running it stopped sending heartbeats."
        )
        # By the new leader (the only process left), after the killed heartbeat went stale.
        assert "Marked 1 run(s) of a dead scheduler instance as interrupted." in b.log()
        assert interrupted_after <= DEFAULT_LEASE + DEFAULT_HEARTBEAT + 2
        ran = {(job, at) for job, at, _ in executions(env)}
        assert ("ha.slow-start", run["scheduled_at"]) in ran
        assert (SLOW, run["scheduled_at"]) not in ran  # it really was cut short
        assert duplicate_rows(runs) == {}
        assert duplicate_executions(env) == {}
        # Every fire time has one row: run, or recorded missed while nobody was active.
        for job in FAST:
            assert not_one_row(runs, job, start, end) == [], job
        for r in gap:
            assert r["status"] in ("missed", "interrupted"), r
            assert killed_at - SECOND <= r["scheduled_at"] <= killed_at + takeover_run * SECOND
        assert_marks_match_rows(env, runs)
        assert codes == {b.pid: 0}
        assert_clean_logs([a, b])

    def test_sigstop_of_the_active_scheduler_beyond_its_lease(
        self, scheduler_env: PgSchedulerEnv, record_property
    ) -> None:
        env = scheduler_env
        a = env.start(MODULES, **SHORT)
        leader_up = now()
        b = env.start(MODULES, wait=STARTED_LINE, **SHORT)
        id_a, id_b = instance_id(env, a), instance_id(env, b)
        watch = Watch(env, LEASE)
        # Freeze the leader in the middle of a slow run.
        slow = wait_for(
            lambda: env.runs(SLOW, status="running"), SLOW_EVERY + 5, "a running slow job"
        )[0]
        assert slow["instance"] == id_a
        sleep_until_fraction(0.5)
        stopped_at = now()
        stopped = a.signal(signal.SIGSTOP)
        failover = None
        frozen_for = 2 * LEASE + 1
        while time.monotonic() < stopped + frozen_for:
            if failover is None and ELECTED in b.log():
                failover = time.monotonic() - stopped
            watch.sample()
            time.sleep(0.2)
        continued_at = now()
        continued = a.signal(signal.SIGCONT)
        wait_for(lambda: DEMOTED in a.log(), 5, "the resumed process to stand by")
        stood_by = time.monotonic() - continued
        watch.run(3, [a, b])
        cutoff = now()
        codes = stop_all(env, [a, b])

        runs = env.runs()
        start, end = ceil_second(leader_up), cutoff.replace(microsecond=0) - SECOND
        (slow_row,) = env.runs(id=slow["id"])
        by_b_meanwhile = [
            r
            for r in runs
            if r["instance"] == id_b
            and r["status"] == "succeeded"
            and stopped_at < r["started_at"] < continued_at
        ]
        report(
            record_property,
            f"SIGSTOP of the active scheduler for {frozen_for} s (lease {LEASE} s)",
            failover_seconds=failover,
            stood_by_seconds_after_sigcont=stood_by,
            duplicate_rows=len(duplicate_rows(runs)),
            duplicate_executions=len(duplicate_executions(env)),
            fast_statuses=dict(statuses(runs, FAST, start, end)),
            fire_times_without_one_row=sum(len(not_one_row(runs, j, start, end)) for j in FAST),
            runs_by_standby_meanwhile=len(by_b_meanwhile),
            samples_more_than_one_active=len(watch.more_than_one_active()),
            frozen_slow_run=slow_row["status"],
        )

        assert duplicate_rows(runs) == {}
        assert duplicate_executions(env) == {}
        assert failover is not None and failover <= LEASE + 2, b.log()
        assert DEMOTED in a.log() and ELECTED in b.log()
        assert by_b_meanwhile
        # The frozen process started nothing once it had been stopped.
        late = [r for r in runs if r["instance"] == id_a and r["started_at"]]
        assert [r for r in late if r["started_at"] > stopped_at + timedelta(seconds=0.2)] == []
        # Never two active instances; exactly one from the takeover on.
        assert watch.more_than_one_active() == []
        assert watch.not_one_active(since=stopped_at + timedelta(seconds=failover + 0.5)) == []
        for job in FAST:
            assert not_one_row(runs, job, start, end) == [], job
        # The frozen slow run finished its body once, after SIGCONT. The new leader had
        # marked it interrupted meanwhile (its instance stopped heartbeating); the outcome
        # it really had replaced that.
        ran = Counter((job, at) for job, at, _ in executions(env))
        assert ran[(SLOW, slow["scheduled_at"])] == 1
        assert slow_row["status"] == "succeeded", slow_row
        assert set(codes.values()) == {0}, codes
        assert_clean_logs([a, b])

    def test_postgresql_restart_under_the_schedulers(
        self, scheduler_env: PgSchedulerEnv, pg_server: PostgresServer, record_property
    ) -> None:
        env = scheduler_env
        a = env.start(MODULES, **SHORT)
        leader_up = now()
        b = env.start(MODULES, wait=STARTED_LINE, **SHORT)
        instance_id(env, a), instance_id(env, b)
        wait_for(lambda: len(env.runs("ha.a", status="succeeded")) >= 2, 10, "2 runs of A")
        # The outage starts during a slow run.
        wait_for(lambda: env.runs(SLOW, status="running"), SLOW_EVERY + 5, "a running slow job")
        elections_before = sum(p.log().count(ELECTED) for p in (a, b))
        log_sizes = {p.pid: len(p.log()) for p in (a, b)}

        in_flight = env.runs(SLOW, status="running")
        outage = 20
        sleep_until_fraction(0.5)  # mid-second: no fast job is being recorded
        down_at = now()
        pg_server.stop("fast")
        down = time.monotonic()
        # The probe says so while the database is away.
        probe_down = env.manage("schedulerstatus", modules=MODULES, **SHORT)
        probe_down_json = env.manage("schedulerstatus", "--json", modules=MODULES, **SHORT)
        while time.monotonic() < down + outage:
            assert a.alive() and b.alive()
            time.sleep(0.2)
        pg_server.start()
        up_at = now()
        up = time.monotonic()

        def one_active() -> list[str] | None:
            try:
                active = fresh_active(env, LEASE)
            except Exception:  # noqa: BLE001 - the server may still be starting
                return None
            return active if len(active) == 1 else None

        (leader,) = wait_for(one_active, 30, "one active scheduler after the restart")
        recovered = time.monotonic() - up

        def first_new_run() -> datetime | None:
            runs = [r for r in env.runs(status="succeeded") if r["scheduled_at"] > up_at]
            return min((r["started_at"] for r in runs), default=None)

        first_run_at = wait_for(first_new_run, 30, "a run after the restart")
        first_run = (first_run_at - up_at).total_seconds()
        watch = Watch(env, LEASE)
        watch.run(5, [a, b])
        alive = (a.alive(), b.alive())
        probe_up = env.manage("schedulerstatus", modules=MODULES, **SHORT)
        cutoff = now()
        codes = stop_all(env, [a, b])
        # A slow run going when the database went away: how it was recorded, and whether
        # its body ran to the end (see test_runs_of_a_live_instance_survive_an_outage).
        in_flight_end = [
            (env.runs(id=r["id"])[0]["status"], (SLOW, r["scheduled_at"]) in ran_bodies(env))
            for r in in_flight
        ]

        runs = env.runs()
        start, end = ceil_second(leader_up), cutoff.replace(microsecond=0) - SECOND
        during = (ceil_second(down_at), up_at.replace(microsecond=0))
        outage_statuses = statuses(runs, FAST, *during)
        per_job = {
            job: dict(statuses(runs, [job], *during)) for job in FAST
        }  # fire times of the outage, per job
        after = {
            job: len([r for r in env.runs(job, status="succeeded") if r["scheduled_at"] > up_at])
            for job in FAST
        }
        elections_after = sum(p.log()[log_sizes[p.pid] :].count(ELECTED) for p in (a, b))
        report(
            record_property,
            f"PostgreSQL stopped for {outage} s under 2 schedulers (lease {LEASE} s)",
            one_active_seconds_after_restart=recovered,
            first_run_seconds_after_restart=first_run,
            elections_after_restart=elections_after,
            outage_fire_time_statuses=dict(outage_statuses),
            outage_statuses_per_job=per_job,
            succeeded_after_restart=after,
            duplicate_rows=len(duplicate_rows(runs)),
            duplicate_executions=len(duplicate_executions(env)),
            fire_times_without_one_row=sum(len(not_one_row(runs, j, start, end)) for j in FAST),
            samples_not_one_active=len(watch.not_one_active()),
            slow_run_in_flight_at_outage_status_and_body_done=in_flight_end,
            probe_exit_codes_down_up=[probe_down.returncode, probe_up.returncode],
        )

        assert alive == (True, True)
        assert probe_down.returncode == 1, probe_down.stdout + probe_down.stderr
        assert probe_down.stdout.startswith("FAIL: database unavailable"), probe_down.stdout
        assert json.loads(probe_down_json.stdout)["ok"] is False
        assert "error" in json.loads(probe_down_json.stdout)
        assert probe_up.returncode == 0 and probe_up.stdout.startswith("OK"), probe_up.stdout
        assert elections_before == 1
        assert recovered <= 10
        assert first_run <= 10
        assert leader in {r["id"] for r in instances(env)}
        assert watch.not_one_active() == []
        assert all(n >= 3 for n in after.values()), after
        # The slow run cut off from the database ran its body once (how it is recorded:
        # see test_runs_of_a_live_instance_survive_an_outage).
        assert len(in_flight) == 1 and in_flight_end[0][1], in_flight_end
        assert duplicate_rows(runs) == {}
        assert duplicate_executions(env) == {}
        for job in FAST:
            assert not_one_row(runs, job, start, end) == [], job
            # The outage's fire times: recorded missed, apart from the coalesced catch-up run
            # and a run claimed just as the database went away. The catch-up is recorded
            # skipped instead when that run is still writing its result (max_instances=1).
            counts = Counter(statuses(runs, [job], *during))
            assert set(counts) <= {"missed", "succeeded", "skipped"}, (job, counts)
            assert counts["skipped"] <= 1, (job, counts)
            assert counts["succeeded"] <= 2, (job, counts)
            assert counts["missed"] >= outage - 4, (job, counts)
        assert_marks_match_rows(env, runs)
        assert set(codes.values()) == {0}, codes
        assert_clean_logs([a, b])

    def test_runs_of_a_live_instance_survive_an_outage(
        self, scheduler_env: PgSchedulerEnv, pg_server: PostgresServer, record_property
    ) -> None:
        env = scheduler_env
        options = {**SHORT, "PROC_SLOW_SECONDS": 10}
        a = env.start(MODULES, **options)
        b = env.start(MODULES, wait=STARTED_LINE, **options)
        id_a, id_b = instance_id(env, a), instance_id(env, b)
        run = wait_for(
            lambda: env.runs(SLOW, status="running"), SLOW_EVERY + 5, "a running slow job"
        )[0]
        assert run["instance"] == id_a

        sleep_until_fraction(0.5)
        pg_server.stop("fast")
        time.sleep(LEASE + 1)  # an outage a little longer than the lease
        # B reconnects first, A a moment later: without this the two race, and A loses
        # about half of the time (seen in test_postgresql_restart_under_the_schedulers).
        frozen = a.signal(signal.SIGSTOP)
        try:
            pg_server.start()
            wait_for(lambda: ELECTED in b.log(), 10, "B active after the outage")
        finally:
            a.signal(signal.SIGCONT)
        frozen_for = time.monotonic() - frozen
        assert lease_row(env)["holder"] == id_b

        wait_for(lambda: (SLOW, run["scheduled_at"]) in ran_bodies(env), 15, "the run's end")

        def finished() -> dict | None:
            (row,) = env.runs(id=run["id"])
            return row if row["status"] != "running" else None

        row = wait_for(finished, 5, "the run recorded")
        report(
            record_property,
            f"run of a live instance across a {LEASE + 1} s outage",
            a_unreachable_after_restart_seconds=frozen_for,
            status=row["status"],
            exception=row["exception"],
        )
        assert a.alive() and frozen_for < LEASE
        # The body ran to its end in a live process: the run succeeded.
        assert row["status"] == "succeeded", row


# -- SQLite ---------------------------------------------------------------------------------


def test_two_schedulers_on_sqlite_run_each_fire_time_exactly_once(
    scheduler_env: SchedulerEnv, record_property
) -> None:
    steady_run(scheduler_env, 2, 12, record_property, "SQLite")


def test_schedulerstatus_follows_the_active_scheduler(
    scheduler_env: SchedulerEnv, record_property
) -> None:
    env = scheduler_env

    def status(*args: str) -> tuple[int, str]:
        result = env.manage("schedulerstatus", *args, modules=MODULES, **SHORT)
        assert not result.stderr or "Traceback" not in result.stderr, result.stderr
        return result.returncode, result.stdout.strip()

    never = status()
    a = env.start(MODULES, **SHORT)
    alone = status()
    alone_json = json.loads(status("--json")[1])
    b = env.start(MODULES, wait=STARTED_LINE, **SHORT)
    instance_id(env, b)
    wait_for(lambda: "1 standby" in status()[1], 5, "the standby counted")
    pair = status()

    # A clean stop hands over at once: the lease is released.
    id_b = instance_id(env, b)
    sleep_until_fraction(0.5)
    sent = a.signal(signal.SIGTERM)
    assert a.wait(15) == 0
    wait_for(lambda: fresh_active(env, LEASE) == [id_b], LEASE + 2, "b active")
    handover = time.monotonic() - sent
    after_handover = json.loads(status("--json")[1])
    assert b.stop() == 0
    stopped = status()
    stopped_json = status("--json")
    report(
        record_property,
        "schedulerstatus",
        handover_seconds_after_sigterm=handover,
        exit_codes=[never[0], alone[0], pair[0], stopped[0], stopped_json[0]],
    )

    assert never[0] == 1 and never[1].startswith("FAIL"), never
    assert alone[0] == 0 and alone[1].startswith("OK: active scheduler "), alone
    assert f":{a.pid} " in alone[1] and "0 standby" in alone[1]
    assert alone_json["ok"] is True and alone_json["active"]["pid"] == a.pid
    assert alone_json["standbys"] == 0 and alone_json["lease_seconds"] == LEASE
    assert pair[0] == 0 and "1 standby" in pair[1], pair
    assert after_handover["ok"] is True and after_handover["active"]["pid"] == b.pid
    assert handover <= 3
    assert stopped[0] == 1 and stopped[1].startswith("FAIL: no active scheduler"), stopped
    parsed = json.loads(stopped_json[1])
    assert stopped_json[0] == 1 and parsed["ok"] is False and parsed["active"] is None
    assert parsed["last_seen"]["role"] == "stopped"
    assert_clean_logs([a, b])
