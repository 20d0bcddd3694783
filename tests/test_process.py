"""Integration tests: real ``runapscheduler``/``runjob`` processes on a real SQLite file.

Each test gets a fresh migrated database in a temporary directory (the
``scheduler_env`` fixture), starts the commands as subprocesses with the
settings of tests/proc/settings.py and the jobs of tests/proc/, and checks
what a user relies on through the database (read with the sqlite3 module),
the processes' exit codes and output, and the marks the jobs append to a file
(the proof that a job body really ran, and how many times).
"""

from __future__ import annotations

import ctypes
import re
import signal
import socket
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.proc.harness import (
    PRUNE,
    STARTED_LINE,
    SchedulerEnv,
    sleep_until_fraction,
    wait_for,
)

pytestmark = pytest.mark.integration

TICK = "proc.tick"
ECHO = "proc.echo"
EXPLODE = "proc.explode"
FAIL = "proc.fail"
SLOW = "proc.slow"
JOB_A = "proc.a"
JOB_B = "proc.b"

SECOND = timedelta(seconds=1)
ALL_MODULES = (
    "tests.proc.jobs,tests.proc.failing,tests.proc.slow,tests.proc.jobs_a,tests.proc.jobs_b"
)


def now() -> datetime:
    return datetime.now(UTC)


def count(env: SchedulerEnv, job_id: str, status: str = "succeeded", after=None) -> int:
    return len(
        [r for r in env.runs(job_id, status=status) if after is None or r["scheduled_at"] > after]
    )


def assert_one_row_per_fire_time(times: list[datetime]) -> None:
    """Every whole second from the first fire time to the last has exactly one row."""
    assert times, "no runs at all"
    assert all(t.microsecond == 0 for t in times), times
    duplicates = [t for t, n in Counter(times).items() if n > 1]
    assert not duplicates, f"fire times recorded twice: {duplicates}"
    expected = [times[0] + i * SECOND for i in range(int((times[-1] - times[0]) / SECOND) + 1)]
    missing = sorted(set(expected) - set(times))
    assert not missing, f"fire times with no row at all: {missing}"


def tick_marks(env: SchedulerEnv, job: str = "tick") -> list[str]:
    return sorted(m for m in env.marks() if m.startswith(f"{job} "))


def running_row(env: SchedulerEnv, job_id: str, timeout: float = 5) -> dict:
    assert job_id == SLOW, "only the slow job marks its start"
    return env.started_run(job_id, "slow-start", timeout)


# -- scheduled runs -------------------------------------------------------------------------


def test_every_second_job_runs_once_per_fire_time(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start()
    wait_for(lambda: count(env, TICK) >= 4, 8, "4 succeeded runs of the every-second job")
    assert proc.stop() == 0

    runs = env.runs(TICK)
    assert [r["status"] for r in runs] == ["succeeded"] * len(runs)
    times = [r["scheduled_at"] for r in runs]
    assert_one_row_per_fire_time(times)
    for run in runs:
        assert run["trigger"] == "schedule"
        assert run["pid"] == proc.pid and run["hostname"]
        lateness = run["started_at"] - run["scheduled_at"]
        assert timedelta(0) <= lateness < SECOND, run
        assert 0 <= run["duration"] < 0.5, run
        assert run["finished_at"] >= run["started_at"]
        # What the job printed and logged, with the fire time it was given.
        assert f"tick for {run['scheduled_at'].isoformat()}\n" in run["output"]
        assert "INFO tests.proc.jobs: tick logged" in run["output"]
        assert run["exception"] == run["traceback"] == ""
    # The job body ran exactly once per recorded fire time.
    assert tick_marks(env) == [f"tick {t.isoformat()}" for t in times]
    # Jobs scheduled far away did not run.
    assert env.runs(ECHO) == env.runs(EXPLODE) == []
    assert "Scheduler stopped (SIGTERM): 0 running job(s) marked interrupted." in proc.log()


def test_failing_job_is_recorded_and_other_jobs_keep_running(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(modules="tests.proc.jobs,tests.proc.failing")
    wait_for(lambda: count(env, FAIL, "failed") >= 3, 8, "3 failed runs")
    first_failure = env.runs(FAIL)[0]["scheduled_at"]
    wait_for(lambda: count(env, TICK, after=first_failure) >= 2, 5, "ticks after the failures")
    assert proc.alive()
    assert proc.stop() == 0

    failed = env.runs(FAIL)
    assert {r["status"] for r in failed} == {"failed"}
    assert_one_row_per_fire_time([r["scheduled_at"] for r in failed])
    for run in failed:
        message = f"RuntimeError: failed on purpose at {run['scheduled_at'].isoformat()}"
        assert run["exception"] == message
        assert run["traceback"].startswith("Traceback (most recent call last):")
        assert 'tests/proc/failing.py", line' in run["traceback"]
        assert run["traceback"].rstrip().endswith(message)
        assert run["output"] == "failing now\n"
        assert run["finished_at"] is not None and run["duration"] is not None
    # The every-second job ran at every second the failing one failed.
    ticks = env.runs(TICK)
    assert {r["status"] for r in ticks} == {"succeeded"}
    assert {r["scheduled_at"] for r in failed} <= {r["scheduled_at"] for r in ticks}


def test_late_and_overlapping_fire_times_are_recorded(scheduler_env: SchedulerEnv) -> None:
    """One worker thread, busy with the slow job: fire times queued behind it start late
    (missed, beyond misfire_grace_time) and the slow job's own fire times are skipped."""
    env = scheduler_env
    proc = env.start(
        modules="tests.proc.jobs,tests.proc.slow",
        THREADS=1,
        MISFIRE_GRACE_TIME=1,
        PROC_SLOW_SECONDS=3,
    )
    wait_for(lambda: count(env, TICK, "missed") >= 1, 8, "a tick missed for starting late")
    wait_for(lambda: count(env, SLOW, "skipped") >= 1, 3, "a skipped slow fire time")
    assert proc.stop() == 0

    late = env.runs(TICK, status="missed")[0]
    assert late["exception"].startswith("Missed: would have started ")
    assert late["exception"].endswith(" s late, beyond misfire_grace_time (1 s).")
    assert late["started_at"] is None and late["finished_at"] is not None
    skipped = env.runs(SLOW, status="skipped")[0]
    assert skipped["exception"] == ("Skipped: 1 run(s) of this job still going (max_instances).")
    # Fire times recorded missed or skipped did not run.
    ran = set(env.marks())
    assert f"tick {late['scheduled_at'].isoformat()}" not in ran
    assert f"slow-start {skipped['scheduled_at'].isoformat()}" not in ran


# -- stopping ---------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_interrupts_a_run_that_outlasts_the_grace(
    scheduler_env: SchedulerEnv, signum: signal.Signals
) -> None:
    env = scheduler_env
    proc = env.start(modules="tests.proc.slow", SHUTDOWN_GRACE=1, PROC_SLOW_SECONDS=10)
    run = running_row(env, SLOW)
    signalled_at = now()
    sent = proc.signal(signum)
    assert proc.wait(8) == 0
    elapsed = time.monotonic() - sent
    assert 0.9 <= elapsed < 4, f"exited {elapsed:.1f} s after the signal, grace is 1 s"

    (row,) = env.runs(SLOW, id=run["id"])
    assert row["status"] == "interrupted"
    assert row["exception"] == (
        f"Interrupted: the scheduler received {signum.name} and the run did not finish "
        "within the shutdown grace (1 s)."
    )
    assert row["finished_at"] >= signalled_at
    assert env.runs(status="running") == []
    # No run started after the signal, and the slow run really was cut short.
    assert all(r["started_at"] is None or r["started_at"] < signalled_at for r in env.runs())
    assert not [m for m in env.marks() if m.startswith("slow-end")]
    assert f"Scheduler stopped ({signum.name}): 1 running job(s) marked interrupted." in proc.log()


def _threads_accepting(pid: int, signum: int) -> list[int]:
    """Thread ids of ``pid``, other than its main thread, that do not block ``signum``."""
    accepting = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        tid = int(task.name)
        status = (task / "status").read_text()
        blocked = int(re.search(r"^SigBlk:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
        if tid != pid and not blocked & (1 << (signum - 1)):
            accepting.append(tid)
    return accepting


def test_stop_signal_caught_by_another_thread_still_stops_the_scheduler(
    scheduler_env: SchedulerEnv,
) -> None:
    # The kernel hands a process-directed signal to any thread that does not block
    # it (it did so in CI once: the main thread never woke, and the scheduler went on
    # for good). Deliver SIGTERM to a thread other than the main one on purpose, as
    # the kernel may: a library's thread started at import time.
    env = scheduler_env
    proc = env.start(
        modules="tests.proc.slow,tests.proc.bystander", SHUTDOWN_GRACE=1, PROC_SLOW_SECONDS=10
    )
    run = running_row(env, SLOW)
    (tid, *_) = _threads_accepting(proc.pid, signal.SIGTERM)
    sent = time.monotonic()
    assert ctypes.CDLL(None, use_errno=True).tgkill(proc.pid, tid, signal.SIGTERM) == 0
    assert proc.wait(8) == 0
    elapsed = time.monotonic() - sent
    assert elapsed < 4, f"exited {elapsed:.1f} s after the signal, grace is 1 s"
    (row,) = env.runs(SLOW, id=run["id"])
    assert row["status"] == "interrupted"
    assert "Scheduler stopped (SIGTERM): 1 running job(s) marked interrupted." in proc.log()


def test_only_the_main_thread_takes_stop_signals(scheduler_env: SchedulerEnv) -> None:
    # The scheduler's own threads block SIGTERM and SIGINT, so that the kernel gives
    # them to the main thread, which is the one that acts on them.
    env = scheduler_env
    proc = env.start(modules="tests.proc.slow", PROC_SLOW_SECONDS=10)
    running_row(env, SLOW)
    threads = len(list(Path(f"/proc/{proc.pid}/task").iterdir()))
    assert threads >= 4  # main, main loop, lease, control, a worker
    for signum in (signal.SIGTERM, signal.SIGINT):
        assert _threads_accepting(proc.pid, signum) == []


def test_stop_signal_lets_a_run_finish_within_the_grace(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(modules="tests.proc.slow", SHUTDOWN_GRACE=20, PROC_SLOW_SECONDS=2)
    run = running_row(env, SLOW)
    signalled_at = now()
    sent = proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    elapsed = time.monotonic() - sent
    # It leaves as soon as the run is over, not at the end of the grace.
    assert elapsed < 4, f"exited {elapsed:.1f} s after SIGTERM for a 2 s job"

    (row,) = env.runs(SLOW, id=run["id"])
    assert row["status"] == "succeeded"
    assert row["duration"] >= 1.9
    assert row["output"] == "slow job started\nslow job finished\n"
    assert f"slow-end {row['scheduled_at'].isoformat()}" in env.marks()
    assert env.runs(status="running") == []
    assert all(r["started_at"] is None or r["started_at"] < signalled_at for r in env.runs())
    assert "Scheduler stopped (SIGTERM): 0 running job(s) marked interrupted." in proc.log()


def test_kill_9_leaves_a_running_row_that_the_next_start_interrupts(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    first = env.start(modules="tests.proc.slow", PROC_SLOW_SECONDS=10)
    run = running_row(env, SLOW)
    first.popen.kill()
    first.popen.wait(5)
    time.sleep(0.3)
    (row,) = env.runs(SLOW, id=run["id"])
    assert (row["status"], row["pid"], row["finished_at"]) == ("running", first.pid, None)

    second = env.start(modules="tests.proc.slow", SHUTDOWN_GRACE=0, PROC_SLOW_SECONDS=10)
    (row,) = env.runs(SLOW, id=run["id"])
    assert row["status"] == "interrupted"
    assert row["exception"].startswith("Interrupted")
    assert row["finished_at"] is not None
    # The new process runs the job again.
    wait_for(
        lambda: [r for r in env.runs(SLOW, status="running") if r["pid"] == second.pid],
        5,
        "a run of the second process",
    )
    assert second.stop() == 0


def _logged_at(log: str, text: str) -> datetime:
    """When the first log line containing ``text`` was written (the logger's own clock)."""
    line = next(line for line in log.splitlines() if text in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_a_restart_after_kill_9_takes_the_lease_in_its_first_round(
    scheduler_env: SchedulerEnv,
) -> None:
    """The dead holder's lease (60 s) is expired and taken in the same round: not one
    lease round (a second) later, as before."""
    env = scheduler_env
    first = env.start(modules="tests.proc.slow", LEASE_SECONDS=60, PROC_SLOW_SECONDS=10)
    first.popen.kill()
    first.popen.wait(5)

    second = env.start(modules="tests.proc.slow", LEASE_SECONDS=60, SHUTDOWN_GRACE=0)
    log = second.log()
    died = _logged_at(log, "The previous active scheduler on this host died")
    active = _logged_at(log, "is now the active one")
    # A lease round is a second apart; the same round takes a few statements.
    assert active - died < timedelta(seconds=0.5), log
    assert second.stop() == 0


def test_a_second_start_leaves_runs_of_a_live_process_alone(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    first = env.start(modules="tests.proc.slow", SHUTDOWN_GRACE=0, PROC_SLOW_SECONDS=10)
    run = running_row(env, SLOW)
    second = env.start(modules="tests.proc.slow", SHUTDOWN_GRACE=0, wait=STARTED_LINE)
    time.sleep(1)
    (row,) = env.runs(SLOW, id=run["id"])
    assert row["status"] == "running", row
    assert first.alive() and second.alive()
    assert first.stop() == 0
    assert second.stop() == 0


# -- restarts ---------------------------------------------------------------------------------


def test_restart_neither_skips_nor_repeats_a_fire_time(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    first = env.start()
    wait_for(lambda: count(env, TICK) >= 3, 8, "3 ticks")
    assert first.stop() == 0
    last_before = env.runs(TICK)[-1]["scheduled_at"]
    stored = env.stored_jobs()[TICK]
    # The stored next run time is the next fire time: nothing ran or was lost in between.
    assert stored == last_before + SECOND
    time.sleep(2.2)  # two fire times or more fall due while no scheduler runs

    second = env.start()
    assert "4 unchanged" in second.log()  # the three test jobs and the app's own
    restarted = now()
    wait_for(lambda: count(env, TICK, after=restarted) >= 2, 8, "2 ticks after the restart")
    assert second.stop() == 0

    runs = env.runs(TICK)
    assert_one_row_per_fire_time([r["scheduled_at"] for r in runs])
    assert {r["status"] for r in runs} == {"succeeded", "missed"}
    # Before the stop: runs, or (on a busy machine, a fire time due as the signal came)
    # a fire time the stop kept from starting.
    before = [r for r in runs if r["scheduled_at"] < stored]
    assert {r["exception"] for r in before if r["status"] == "missed"} <= {
        "Missed: the scheduler stopped before the run could start."
    }
    # The fire times of the downtime: folded into one catch-up run, the rest recorded missed.
    missed = [r for r in runs if r["status"] == "missed" and r["scheduled_at"] >= stored]
    assert missed[0]["scheduled_at"] == stored
    assert all(r["pid"] == second.pid for r in missed)
    assert all(r["exception"].startswith("Coalesced: the scheduler caught up") for r in missed)
    catch_up = next(r for r in runs if r["scheduled_at"] == missed[-1]["scheduled_at"] + SECOND)
    assert catch_up["status"] == "succeeded" and catch_up["pid"] == second.pid
    # Every succeeded fire time ran exactly once; missed ones not at all.
    assert tick_marks(env) == [
        f"tick {r['scheduled_at'].isoformat()}" for r in runs if r["status"] == "succeeded"
    ]


def test_job_removed_from_code_is_removed_from_the_store(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    first = env.start(modules="tests.proc.jobs_a,tests.proc.jobs_b")
    wait_for(lambda: count(env, JOB_A) and count(env, JOB_B), 5, "runs of both A and B")
    assert first.stop() == 0
    history_of_b = env.runs(JOB_B)
    assert set(env.stored_jobs()) == set(env.catalog()) == {JOB_A, JOB_B, PRUNE}

    second = env.start(modules="tests.proc.jobs_a")
    assert "1 removed, 2 unchanged" in second.log()
    restarted = now()
    wait_for(lambda: count(env, JOB_A, after=restarted) >= 1, 5, "A running after the restart")
    assert second.alive()
    assert second.stop() == 0

    assert set(env.stored_jobs()) == {JOB_A, PRUNE}
    assert set(env.catalog()) == {JOB_A, PRUNE}
    # B's history is kept, and B never ran again.
    assert env.runs(JOB_B) == history_of_b
    assert "Traceback" not in second.log()


# -- admin requests ---------------------------------------------------------------------------


def test_run_now_requests_are_picked_up_by_the_running_scheduler(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start()  # POLL_INTERVAL is its default, 1 s
    echo_id, requested_at = env.request_run(ECHO)
    explode_id, _ = env.request_run(EXPLODE)
    unknown_id, _ = env.request_run("proc.no_such_job")

    def status(run_id: int) -> str:
        return env.runs(id=run_id)[0]["status"]

    wait_for(lambda: status(echo_id) in ("running", "succeeded"), 2, "the request taken up")
    wait_for(lambda: status(echo_id) == "succeeded", 3, "the requested run to succeed")
    (echo,) = env.runs(id=echo_id)
    assert echo["trigger"] == "manual" and echo["requested_by"] == "admin"
    assert echo["scheduled_at"] == requested_at
    assert echo["pid"] == proc.pid
    assert requested_at <= echo["started_at"] <= echo["finished_at"]
    # The job gets the request time as its scheduled_at.
    assert echo["output"] == f"echo for {requested_at.isoformat()}\n"
    assert env.marks().count(f"echo {requested_at.isoformat()}") == 1

    wait_for(lambda: status(explode_id) == "failed", 3, "the failing request to fail")
    (explode,) = env.runs(id=explode_id)
    assert explode["exception"] == "ValueError: exploded on purpose"
    assert explode["output"] == "about to explode\n"
    wait_for(lambda: status(unknown_id) == "failed", 3, "the unknown job's request to fail")
    (unknown,) = env.runs(id=unknown_id)
    assert "'proc.no_such_job' is not registered" in unknown["exception"]

    assert env.runs(ECHO, trigger="schedule") == []
    assert proc.stop() == 0


def test_pause_and_resume_through_the_job_row(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    first = env.start()
    wait_for(lambda: count(env, TICK) >= 1, 5, "a tick")

    env.set_paused(TICK, True)
    wait_for(lambda: not env.catalog()[TICK]["pending_change"], 3, "the pause to be applied")
    paused_at = now()
    assert env.stored_jobs()[TICK] is None
    time.sleep(1)
    # Pausing survives a restart.
    assert first.stop() == 0
    second = env.start()
    time.sleep(1.2)
    assert env.catalog()[TICK]["paused"] == 1
    assert env.stored_jobs()[TICK] is None
    assert [r for r in env.runs(TICK) if r["scheduled_at"] > paused_at] == []

    env.set_paused(TICK, False)
    wait_for(lambda: not env.catalog()[TICK]["pending_change"], 3, "the resume to be applied")
    resumed_at = now()
    wait_for(lambda: count(env, TICK, after=resumed_at) >= 2, 5, "ticks after resuming")
    assert second.stop() == 0
    # Nothing was run or recorded for the paused time: resuming does not catch up.
    rows = [r for r in env.runs(TICK) if paused_at < r["scheduled_at"] < resumed_at]
    assert rows == []
    assert {r["status"] for r in env.runs(TICK)} == {"succeeded"}


# -- commands ---------------------------------------------------------------------------------


def test_runjob_exit_codes_and_recorded_runs(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    ok = env.manage("runjob", ECHO)
    assert ok.returncode == 0, ok.stderr
    assert f"Job '{ECHO}' succeeded" in ok.stdout
    (run,) = env.runs(ECHO)
    assert (run["status"], run["trigger"]) == ("succeeded", "manual")
    assert run["requested_by"].startswith("runjob (")
    assert run["output"] == f"echo for {run['scheduled_at'].isoformat()}\n"
    assert run["duration"] is not None and run["finished_at"] is not None

    failed = env.manage("runjob", EXPLODE)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "Traceback (most recent call last)" in failed.stderr
    assert "ValueError: exploded on purpose" in failed.stderr
    (run,) = env.runs(EXPLODE)
    assert (run["status"], run["trigger"]) == ("failed", "manual")
    assert run["exception"] == "ValueError: exploded on purpose"
    assert "Traceback (most recent call last)" in run["traceback"]

    unknown = env.manage("runjob", "proc.nope")
    assert unknown.returncode == 2, unknown.stdout + unknown.stderr
    assert "Unknown job id 'proc.nope'" in unknown.stderr
    assert ECHO in unknown.stderr  # it lists the known ones
    assert "Traceback" not in unknown.stderr
    assert len(env.runs()) == 2


def test_list_shows_every_job_with_its_next_run_time(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    listed = env.manage("runapscheduler", "--list", modules=ALL_MODULES)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split("\t")[0]: line for line in listed.stdout.splitlines()}
    assert set(lines) == {TICK, ECHO, EXPLODE, FAIL, SLOW, JOB_A, JOB_B, PRUNE}
    tick = lines[TICK].split("\t")
    assert tick[1] == "Every second: say which fire time it serves."
    assert tick[2] == "cron: second=* (UTC)"
    assert tick[3].startswith("next: ") and tick[3].endswith(" (not yet stored)")
    assert lines[ECHO].split("\t")[2] == "cron: 0 0 1 1 * (UTC)"

    # Once a scheduler has run, the stored next run time is shown.
    proc = env.start(modules=ALL_MODULES.replace("tests.proc.slow,", ""))
    assert proc.stop() == 0
    stored = env.stored_jobs()[TICK]
    listed = env.manage("runapscheduler", "--list", modules=ALL_MODULES)
    lines = {line.split("\t")[0]: line for line in listed.stdout.splitlines()}
    assert lines[TICK].split("\t")[3] == f"next: {stored.isoformat()}"


# -- bugs ---------------------------------------------------------------------------------------


def test_job_paused_while_the_scheduler_is_down_does_not_run(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    first = env.start()
    wait_for(lambda: count(env, TICK) >= 1, 5, "a tick")
    assert first.stop() == 0
    last_before = env.runs(TICK)[-1]["scheduled_at"]
    env.set_paused(TICK, True)
    time.sleep(1.2)  # a fire time falls due while it is down

    second = env.start()
    wait_for(lambda: not env.catalog()[TICK]["pending_change"], 3, "the pause to be applied")
    time.sleep(1)
    assert second.stop() == 0
    after = [
        (r["scheduled_at"], r["status"]) for r in env.runs(TICK) if r["scheduled_at"] > last_before
    ]
    assert after == [], "the paused job ran or was recorded after the restart"


class Locked:
    """Another process's write lock on the SQLite file, held past the scheduler's busy
    timeout: its writes wait inside SQLite, where Python runs no signal handler."""

    def __init__(self, env: SchedulerEnv) -> None:
        self.connection = env.connect()

    def __enter__(self) -> Locked:
        self.connection.execute("BEGIN EXCLUSIVE")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.connection.rollback()
        self.connection.close()


def test_a_stop_while_sqlite_is_locked_by_another_process_is_bounded(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    proc = env.start(SHUTDOWN_GRACE=1)
    wait_for(lambda: count(env, TICK) >= 1, 5, "a tick")
    with Locked(env):
        time.sleep(1.5)  # the scheduler's writes are waiting now
        sent = proc.signal(signal.SIGTERM)
        code = proc.wait(15)
        took = time.monotonic() - sent
    assert code == 0
    assert took < 1 + 5, f"the stop took {took:.1f} s"  # SHUTDOWN_GRACE + 5 s


def test_a_stop_during_start_up_while_sqlite_is_locked_is_obeyed(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    # A run left by a dead process: the start marks it interrupted, its first write.
    env.insert_run(
        job_id=TICK,
        status="running",
        trigger="manual",
        scheduled_at="2026-01-01 00:00:00",
        started_at="2026-01-01 00:00:00",
        hostname=socket.gethostname(),
        pid=2**22 + 1,  # above Linux's pid_max: no process has it
    )
    with Locked(env):
        proc = env.start(wait=None, SHUTDOWN_GRACE=1)
        time.sleep(3)  # up to that write, which waits for the lock
        sent = proc.signal(signal.SIGTERM)
        code = proc.wait(15)
        took = time.monotonic() - sent
    assert code == 0
    assert took < 2, f"the stop took {took:.1f} s"
    assert "before it was up" in proc.log()


def test_stop_signal_while_fire_times_are_handed_out_does_not_hang(
    scheduler_env: SchedulerEnv,
) -> None:
    env = scheduler_env
    # One worker, busy with the slow job: the 200 every-second jobs wait in the pool's queue,
    # and the main loop hands out fire times at every whole second.
    proc = env.start(
        modules="tests.proc.slow,tests.proc.many",
        THREADS=1,
        SHUTDOWN_GRACE=0,
        PROC_SLOW_SECONDS=30,
    )
    running_row(env, SLOW)
    time.sleep(1)
    # SIGTERM just before a whole second. Cancelling the queued runs records each one missed;
    # holding the database's write lock makes that take until the main loop wakes up at the
    # whole second and hands out fire times again.
    sleep_until_fraction(0.85)
    lock = env.connect()
    lock.execute("BEGIN IMMEDIATE")
    try:
        sleep_until_fraction(0.95)
        proc.signal(signal.SIGTERM)
        sleep_until_fraction(0.3)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert proc.wait(6) == 0
    assert env.runs(status="running") == []


def test_clean_stop_leaves_no_run_marked_running(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(
        modules="tests.proc.slow,tests.proc.jobs",
        THREADS=1,
        SHUTDOWN_GRACE=0,
        PROC_SLOW_SECONDS=10,
    )
    running_row(env, SLOW)
    run_id, _ = env.request_run(ECHO)
    # The only worker thread is busy with the slow job: the request is not claimed into
    # this process's memory, it waits in the table (where the next scheduler finds it).
    time.sleep(1.5)
    assert env.runs(id=run_id)[0]["status"] == "queued"
    assert proc.stop() == 0
    assert echo_marks(env) == []
    assert [(r["job_id"], r["status"]) for r in env.runs(status="running")] == []
    assert env.runs(id=run_id)[0]["status"] == "queued"


STAGGERED = [f"proc.staggered.{number:02d}" for number in range(20)]


def staggered_history(env: SchedulerEnv) -> tuple[list[dict], set[tuple[str, str]]]:
    """The staggered jobs' rows, and the (job id, fire time) of each run their marks prove."""
    rows = [r for r in env.runs() if r["job_id"] in STAGGERED]
    ran = set()
    for mark in env.marks():
        _, number, at = mark.split(" ")
        ran.add((f"proc.staggered.{int(number):02d}", at))
    return rows, ran


def assert_one_succeeded_row_per_run(env: SchedulerEnv) -> list[dict]:
    rows, ran = staggered_history(env)
    assert [
        (r["job_id"], r["status"], r["exception"]) for r in rows if r["status"] != "succeeded"
    ] == []
    keys = [(r["job_id"], r["scheduled_at"].isoformat()) for r in rows]
    assert len(keys) == len(set(keys)), "a fire time recorded twice"
    assert set(keys) == ran, "rows and runs differ"
    assert all(r["started_at"] >= r["scheduled_at"] for r in rows)
    return rows


def test_a_stop_gives_back_the_fire_times_claimed_ahead(scheduler_env: SchedulerEnv) -> None:
    # Twenty jobs each at its own moment of the second: the main loop claims the
    # next moment's fire times with the due one. A stop between them must leave
    # no claim behind: no running row, no missed row for a time that had not come.
    env = scheduler_env
    proc = env.start(modules="tests.proc.staggered")
    wait_for(lambda: len(env.marks()) >= 30, 8, "30 staggered runs")
    sleep_until_fraction(0.52)
    signalled_at = now()
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    rows = assert_one_succeeded_row_per_run(env)
    assert all(r["started_at"] < signalled_at for r in rows)
    assert "Traceback" not in proc.log() and "ERROR" not in proc.log()
    assert "Scheduler stopped (SIGTERM): 0 running job(s) marked interrupted." in proc.log()


def test_pausing_jobs_gives_back_the_fire_times_claimed_ahead(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(modules="tests.proc.staggered")
    wait_for(lambda: len(env.marks()) >= 30, 8, "30 staggered runs")
    for job_id in STAGGERED:
        env.set_paused(job_id, True)
    wait_for(
        lambda: not any(env.catalog()[job_id]["pending_change"] for job_id in STAGGERED),
        5,
        "the pauses to be applied",
    )
    applied_at = now()
    time.sleep(1.2)
    # Not left running until the scheduler stops: given back when the job was paused.
    assert [r["job_id"] for r in env.runs(status="running")] == []
    assert proc.stop() == 0
    rows = assert_one_succeeded_row_per_run(env)
    assert [r for r in rows if r["scheduled_at"] > applied_at] == []


def echo_marks(env: SchedulerEnv) -> list[str]:
    return [m for m in env.marks() if m.startswith("echo ")]


def test_start_and_stop_lines_reach_a_redirected_stdout(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start(
        modules="tests.proc.slow",
        wait=None,
        unbuffered=False,
        SHUTDOWN_GRACE=0,
        PROC_SLOW_SECONDS=10,
    )
    running_row(env, SLOW, timeout=20)  # it is up and running jobs
    time.sleep(0.5)
    started_shown = STARTED_LINE in proc.log()
    proc.signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    stopped_shown = "Scheduler stopped (SIGTERM)" in proc.log()
    assert (started_shown, stopped_shown) == (True, True)


def test_sigusr1_prints_every_threads_stack_and_the_scheduler_goes_on(
    scheduler_env: SchedulerEnv,
) -> None:
    """How an operator (and the chaos soak) sees where a scheduler that will not stop is."""
    env = scheduler_env
    proc = env.start()
    proc.popen.send_signal(signal.SIGUSR1)
    wait_for(lambda: "Current thread" in proc.log(), 5, "the stacks in the log")
    log = proc.log()
    assert log.count("Thread 0x") >= 3  # main loop, lease, control, results, workers
    assert 'File "' in log and "service.py" in log
    first = count(env, TICK)
    wait_for(lambda: count(env, TICK) > first, 5, "a tick after the dump")
    assert proc.stop() == 0
