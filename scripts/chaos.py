"""The chaos soak: nothing lost, nothing doubled, whatever the job does.

    .venv/bin/python scripts/chaos.py                          # PostgreSQL, then SQLite; 600 s each
    .venv/bin/python scripts/chaos.py --db sqlite --seconds 120 --seed 7 --keep
    .venv/bin/python scripts/chaos.py --recheck /tmp/scheduler-chaos-sqlite-XXXX  # a kept soak
    .venv/bin/python scripts/chaos.py --without chaos.nul,chaos.surrogate         # jobs left out

``--keep`` keeps the soak's directory (printed at the start): chaos.log, marks.txt,
one log per scheduler process, report.txt (every finding) and record.json (what
``--recheck`` reads). docs/reliability.md says more, with measured figures.

What it runs
------------
On a throwaway database (``--db postgres``: a PostgreSQL cluster started from
the installed server binaries by tests/proc/pg.py, three schedulers; ``--db
sqlite``: one SQLite file in WAL mode, two schedulers on this host) it starts
real ``manage.py runapscheduler`` processes with short lease settings
(``LEASE_SECONDS=3``, ``HEARTBEAT_INTERVAL=1``, ``POLL_INTERVAL=0.2``,
``SHUTDOWN_GRACE=3``) and the jobs of tests/proc/chaos_jobs.py: every-second and
every-few-seconds jobs, slow ones (longer than their interval, so fire times
are skipped), failing ones, one with ``coalesce=False``, and ones that print a
lone surrogate, NUL characters, a megabyte, bytes to ``sys.stdout.buffer``, or
raise an exception whose ``str()`` raises. Each job call appends a start line
and an end line to a marks file: the truth of what ran, against which the
database is checked.

While they run, a thread inserts "Run now" requests at random, as the admin
does (a ``queued`` manual row; on PostgreSQL also ``NOTIFY
scheduler_control``), each with its own ``scheduled_at``; and the chaos
thread, at random intervals, in shuffled rounds of the four actions:

* ``kill -9`` of a scheduler (the active one more often than not), restarted
  0-2 s later;
* ``SIGSTOP`` of one for 1-4 s longer than its lease, then ``SIGCONT``;
* a database outage: PostgreSQL stopped (``-m fast`` or ``-m immediate``, a
  crash) and started again 1-6 s later; on SQLite an exclusive write lock held
  for 2-8 s (in soaks of 300 s or more, now and then 21-24 s: past the
  schedulers' 20 s busy timeout, so that their writes fail with "database is
  locked");
* ``SIGTERM`` of one, waited for, restarted 0-2 s later.

A frozen process and an outage go on in the background, so the other actions
(and each other) may fall within them: a SIGTERM during an outage, a kill -9
of the standby while the active one is frozen.

Every action is logged with its time. The random choices come from ``--seed``
(printed at the start): the same seed replays the same actions, targets and
pauses (the system's timing differs from run to run). The chaos stops 15 s
before the end (an outage or a frozen process still under way finishes first,
and the quiet 15 s start then), then every scheduler gets SIGTERM and their exit
codes are recorded.

The checks (each must count zero; the script exits 1 otherwise)
-------------------------------------------------------------
duplicate executions
    a (job, fire time) with more than one start line in the marks.
fire times without exactly one row
    each job's fire times (from its own trigger) between the first moment a
    scheduler was seen active and the final SIGTERM, less 6.5 s (the slowest
    job plus 2 s), must have exactly one ``schedule`` row, whatever its
    status; a row for a time that is no fire time counts too.
run-now requests without a final row
    every request must end in a row in a final status (requests stop 8 s
    before the end, so each had time to be taken), unless it waited its turn
    (so may a fire time of a job with ``overlap="queue"``):
    requests of a slow job pile up behind each other (run-now takes one of the
    job's ``max_instances`` slots), and a clean stop leaves the rest
    ``queued`` for the next scheduler. A request left queued is excused only
    if, from the moment it was made to the final SIGTERM, runs of its job (from
    the marks; a run of a killed process ends with the process) filled every
    slot, with no gap over 1 s.
rows left running or queued
    after the clean stop, no row may be ``running``, nor ``queued`` (all
    requests are older than 8 s by then), but for a request that waited its
    turn as above.
rows contradicting the marks
    ``succeeded`` needs a start line and an end line that says ok; ``failed``
    needs a start line and an end line that says fail (and no "could not start
    the run" message: the job did start);
    ``missed``/``skipped`` must have no start line; ``interrupted`` with an end
    line only as described below.
failures without their one next attempt
    a ``failed`` or ``timed_out`` row of a job with ``retries`` (and attempts
    left) must have exactly one next attempt (``retry_of`` its first, ``attempt``
    one more), a ``succeeded`` row none; no attempt starts before it is due.
runs without a row
    a start line whose (job, fire time) has no row at all: a run the history
    does not know of.
jobs that failed only under the scheduler
    a job whose start line says it means to succeed and whose end line says
    it failed: the scheduler broke it (e.g. its stdout); the same job body
    succeeds in plain Python (``PYTHONUTF8=1`` is set for the schedulers, so
    that printing a lone surrogate works whatever the host's locale).
runs started after SIGTERM
    a start line by a process more than 1 s after it received SIGTERM ("stops
    taking new runs").
schedulers that exited on their own
    a process that ended without the soak killing or stopping it (restarted).
bad exits after SIGTERM
    an exit code other than 0 after SIGTERM, a stop longer than
    ``SHUTDOWN_GRACE`` + 5 s (the README's bound) + 2 s, or no exit within the
    grace + 15 s (but death by SIGTERM itself of a process that had not logged
    a line yet: Python was still loading, before the scheduler could install its
    handler).
unexpected tracebacks in logs
    a traceback in a scheduler's log whose exception is not a database error
    (OperationalError / InterfaceError, expected while the database is away),
    and every "--- Logging error ---".
soak errors
    the soak's own threads or chaos actions failed: its figures are not sound.

When may a run that wrote its end line be ``interrupted``?
-----------------------------------------------------------
``interrupted`` says the run never finished. A body that wrote its end line did
finish, and its process then has its real outcome in hand; the results are
written by one thread at most 0.1 s after the run ends, retried while the
database is away, and they overwrite an ``interrupted`` mark another scheduler
made meanwhile (a frozen process is taken for dead, then resumes). So the real
outcome is lost only if the process dies holding it:

* it was killed with ``kill -9`` at most 2 s after the end line, or later but
  with a database outage or a SIGSTOP of that process in between (the result
  was still waiting or retrying); or
* it got SIGTERM and the end line came at least ``SHUTDOWN_GRACE`` - 0.5 s
  after the signal: the shutdown had marked the run interrupted and the
  process leaves without waiting for it; or
* it got SIGTERM and left while the database was away (a stop is bounded:
  ``SHUTDOWN_GRACE`` + 5 s), and the end line came at most 2 s before that
  outage began (a result from before the outage should have been written).

Any other ``interrupted`` row with an end line is a lost result. An
``interrupted`` row without an end line is always consistent (the body did not
finish: its process died or was stopped past the grace).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.proc.harness import (  # noqa: E402 - after the path is set
    ACTIVE_LINE,
    PYTHON,
    STARTED_LINE,
    SchedulerEnv,
    SchedulerProcess,
    db_text,
)
from tests.proc.pg import (  # noqa: E402
    NOT_FOUND,
    PgSchedulerEnv,
    PostgresServer,
    ServerUnavailable,
    find_bindir,
)

JOB_MODULE = "tests.proc.chaos_jobs"
LEASE = 3
GRACE = 3
SETTINGS = {"LEASE_SECONDS": LEASE, "HEARTBEAT_INTERVAL": 1, "POLL_INTERVAL": 0.2}
SETTINGS["SHUTDOWN_GRACE"] = GRACE
PROCESSES = {"postgres": 3, "sqlite": 2}
QUIET_END = 15.0  # seconds without chaos before the final stop
# A slot freed is taken within a poll (0.2 s) and a claim: more than this, and the
# queue did not move.
QUEUE_GAP = 1.0
REQUESTS_END = 8.0  # seconds before the final stop when requests stop
RESULT_WINDOW = 2.0  # a result may wait this long in a process before it is written
STOP_SETTLE = 5.0  # a stop takes at most SHUTDOWN_GRACE + this (README)
STOP_SLACK = 2.0  # for a loaded machine: reaping, Python's exit
LATE_START = 1.0  # a start this long after SIGTERM is a run started after it
REQUEST_FAILED = "run-now request of"  # a log line, not a chaos action
FINAL = ("succeeded", "failed", "missed", "skipped", "interrupted")
# Tracebacks of these exceptions are the database being away, which the soak causes.
TRANSIENT = re.compile(
    r"^(django\.db\.utils\.|psycopg\.|psycopg\.errors\.|sqlite3\.)?"
    r"(OperationalError|InterfaceError|AdminShutdown|ConnectionTimeout)\b"
)


def load_jobs() -> dict[str, Any]:
    """The chaos jobs as the schedulers register them (their JobSpecs, with their triggers)."""
    from django.conf import settings

    if not settings.configured:
        # Only what declaring jobs reads; this process never touches a database through Django.
        settings.configure(TIME_ZONE="UTC", USE_TZ=True)
    __import__(JOB_MODULE)
    from scheduler.registry import registry

    return {job_id: spec for job_id, spec in registry.items() if job_id.startswith("chaos.")}


def slowest() -> float:
    return float(__import__(JOB_MODULE, fromlist=["SLOWEST"]).SLOWEST)


# -- what happened ---------------------------------------------------------------------------


class Log:
    """The soak's own log: every chaos action with its time, on screen and in chaos.log."""

    def __init__(self, path: Path | None, t0: float | None = None) -> None:
        self.path = path
        self.t0 = time.time() if t0 is None else t0
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def rel(self, t: float) -> str:
        return f"{t - self.t0:+7.1f}s"

    def __call__(self, text: str, t: float | None = None) -> None:
        t = time.time() if t is None else t
        stamp = datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S.%f")[:-3]
        line = f"{stamp} {self.rel(t)}  {text}"
        with self._lock:
            self.lines.append((t, text))
            print(line, flush=True)
            if self.path is not None:
                with self.path.open("a") as out:
                    out.write(line + "\n")

    def around(self, t: float, before: float = 10.0, after: float = 15.0) -> str:
        """The chaos actions from ``before`` seconds before ``t`` to ``after`` seconds after."""
        lines = [
            f"{self.rel(at)} {text}"
            for at, text in self.lines
            if t - before <= at <= t + after and not text.startswith(REQUEST_FAILED)
        ]
        return " | ".join(lines) or "nothing"

    def before(self, t: float, window: float = 20.0, count: int = 3) -> str:
        """The last log lines of the ``window`` seconds before ``t``: what the chaos did."""
        lines = [
            f"{self.rel(at)} {text}"
            for at, text in self.lines
            if t - window <= at <= t and not text.startswith(REQUEST_FAILED)
        ]
        return " | ".join(lines[-count:]) or "nothing"


@dataclass
class Life:
    """One scheduler process, from its start to its end."""

    slot: int
    generation: int
    pid: int
    log_name: str  # in the soak's directory
    started: float
    ended: float | None = None
    fate: str = ""  # how it ended: "kill -9", "SIGTERM", "final SIGTERM", "exited on its own"
    exit_code: int | None = None
    killed_at: float | None = None
    sigterm_at: float | None = None
    stops: list[tuple[float, float]] = field(default_factory=list)  # SIGSTOP .. SIGCONT
    expected_exit: bool = False  # the soak is ending it: its exit is no crash
    popen: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"scheduler {self.slot}.{self.generation} (pid {self.pid})"


@dataclass
class Request:
    job_id: str
    at: datetime  # the run's scheduled_at: the request time, a fraction of a second
    made: float
    row_id: int | None  # None: the insert failed (it may still have committed)
    # "manual": a run-now request; "code": a run scheduled from code for a moment ahead
    # (scheduler.requests.schedule), due at ``at``.
    trigger: str = "manual"


@dataclass
class Mark:
    event: str  # "start" or "end"
    job_id: str
    at: datetime
    pid: int
    t: float
    what: str  # start: the intent ("ok"/"fail"); end: the outcome ("ok"/"fail <type>")


@dataclass
class Outage:
    what: str
    start: float
    end: float


ROW_FIELDS = ("id", "job_id", "trigger", "status", "scheduled_at", "started_at", "finished_at")
ROW_FIELDS += ("pid", "instance", "exception", "traceback", "attempt", "retry_of")


@dataclass
class Record:
    """All that the checks read besides the marks and logs: saved as record.json in the
    soak's directory, so that ``--recheck DIR`` checks a kept soak again."""

    kind: str
    seed: int
    without: str
    t_active: float
    t_stop: float
    lives: list[Life]
    requests: list[Request]
    outages: list[Outage]
    actions: dict[str, int]
    crashes: list[tuple[str, str]]
    bad_exits: list[tuple[str, str]]
    errors: list[str]
    log_lines: list[tuple[float, str]]
    rows: list[dict[str, Any]]

    def save(self, path: Path) -> None:
        def plain(value: Any) -> Any:
            if isinstance(value, datetime):
                return {"datetime": value.isoformat()}
            if isinstance(value, Life):
                return {k: getattr(value, k) for k in LIFE_FIELDS}
            if isinstance(value, (Request, Outage)):
                return {f.name: getattr(value, f.name) for f in fields(value)}
            raise TypeError(f"cannot save {value!r}")

        path.write_text(json.dumps(self.__dict__, default=plain))

    @classmethod
    def load(cls, path: Path) -> Record:
        def hook(value: dict[str, Any]) -> Any:
            return datetime.fromisoformat(value["datetime"]) if "datetime" in value else value

        data = json.loads(path.read_text(), object_hook=hook)
        data["lives"] = [Life(**life) for life in data["lives"]]
        for life in data["lives"]:
            life.stops = [tuple(stop) for stop in life.stops]
        data["requests"] = [Request(**request) for request in data["requests"]]
        data["outages"] = [Outage(**outage) for outage in data["outages"]]
        data["log_lines"] = [tuple(line) for line in data["log_lines"]]
        return cls(**data)


LIFE_FIELDS = ("slot", "generation", "pid", "log_name", "started", "ended", "fate", "exit_code")
LIFE_FIELDS += ("killed_at", "sigterm_at", "stops")


# -- the databases ---------------------------------------------------------------------------


class Database:
    kind = ""
    env: SchedulerEnv

    def setup(self, directory: Path) -> None:
        raise NotImplementedError

    def insert_request(self, job_id: str, at: datetime, trigger: str = "manual") -> int:
        raise NotImplementedError

    def outage(self, rng: random.Random, log: Log, long_ok: bool) -> Outage:
        raise NotImplementedError

    def leader_pid(self) -> int | None:
        try:
            rows = self.env.query(
                "SELECT i.pid FROM scheduler_lease l JOIN scheduler_schedulerinstance i "
                "ON i.id = l.holder WHERE l.name = 'scheduler'"
            )
        except Exception:  # noqa: BLE001 - the database may be away: no leader known then
            return None
        return rows[0]["pid"] if rows else None

    def teardown(self, directory: Path, keep: bool) -> None:
        pass


class Sqlite(Database):
    kind = "sqlite"

    def setup(self, directory: Path) -> None:
        self.env = SchedulerEnv(directory)
        result = self.env.manage("migrate", "--no-input", "-v", "0", modules=JOB_MODULE)
        if result.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{result.stdout}{result.stderr}")

    def insert_request(self, job_id: str, at: datetime, trigger: str = "manual") -> int:
        return self.env.insert_run(
            job_id=job_id,
            job_name=job_id,
            status="queued",
            trigger=trigger,
            scheduled_at=db_text(at),
            requested_by="chaos",
        )

    def outage(self, rng: random.Random, log: Log, long_ok: bool) -> Outage:
        # Past the schedulers' 20 s busy timeout now and then: their writes fail then.
        hold = rng.uniform(21, 24) if long_ok and rng.random() < 0.25 else rng.uniform(2, 8)
        connection = sqlite3.connect(self.env.db_path, timeout=60, isolation_level=None)
        try:
            connection.execute("BEGIN EXCLUSIVE")
            start = time.time()
            log(f"SQLite: holding an exclusive write lock for {hold:.1f} s")
            time.sleep(hold)
            connection.execute("COMMIT")
        finally:
            connection.close()
        end = time.time()
        log("SQLite: write lock released")
        return Outage("SQLite write lock", start, end)


class Postgres(Database):
    kind = "postgres"

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise ServerUnavailable(NOT_FOUND)
        # Stopped with -m immediate too (a crash): every acknowledged commit must survive it.
        self.server = PostgresServer(bindir, durable_commits=True)

    def setup(self, directory: Path) -> None:
        self.server.init_and_start()
        self.env = PgSchedulerEnv(directory, self.server, "chaos")
        self.env.migrate()

    def insert_request(self, job_id: str, at: datetime, trigger: str = "manual") -> int:
        # What the admin's queue_run (and requests.schedule) does: the row, then a NOTIFY
        # for the active scheduler.
        with self.env.connect() as connection:
            (row,) = connection.execute(
                'INSERT INTO scheduler_jobrun (job_id, job_name, status, "trigger", scheduled_at, '
                "hostname, instance, requested_by, exception, traceback, output) "
                "VALUES (%s, %s, 'queued', %s, %s, '', '', 'chaos', '', '', '') "
                "RETURNING id",
                (job_id, job_id, trigger, at),
            ).fetchall()
            connection.execute("NOTIFY scheduler_control")
        return row["id"]

    def outage(self, rng: random.Random, log: Log, long_ok: bool) -> Outage:
        mode = rng.choice(["fast", "immediate"])
        down = rng.uniform(1, 6)
        start = time.time()
        log(f"PostgreSQL: stop -m {mode}, start again {down:.1f} s later")
        try:
            self.server.stop(mode)
            time.sleep(down)
        finally:
            self.server.start()
        end = time.time()
        log(f"PostgreSQL: up again ({end - start:.1f} s after the stop began)")
        return Outage(f"PostgreSQL stop -m {mode}", start, end)

    def teardown(self, directory: Path, keep: bool) -> None:
        if keep:
            shutil.copyfile(self.server.logfile, directory / "postgresql.log")
        self.server.teardown()


# -- the soak --------------------------------------------------------------------------------


class Soak:
    def __init__(self, db: Database, directory: Path, seconds: float, seed: int) -> None:
        self.db = db
        self.dir = directory
        self.seconds = seconds
        self.seed = seed
        self.log = Log(directory / "chaos.log")
        self.jobs = load_jobs()
        self.lives: list[Life] = []
        self.current: dict[int, Life] = {}
        self.requests: list[Request] = []
        self.outages: list[Outage] = []
        self.actions: Counter[str] = Counter()
        # Processes that ended without the soak ending them: (category, evidence).
        self.crashes: list[tuple[str, str]] = []
        self.bad_exits: list[tuple[str, str]] = []  # (category, evidence)
        self.lock = threading.RLock()
        self.quiet = threading.Event()  # chaos over
        self.stop_requests = threading.Event()
        self.closing = threading.Event()
        self.frozen: set[int] = set()  # pids under SIGSTOP
        self.threads: list[threading.Thread] = []
        self.t_active = 0.0
        self.t_stop = 0.0
        self.errors: list[str] = []  # failures of the soak itself (threads that died)

    # -- processes ---------------------------------------------------------------

    def launch(self, slot: int) -> Life | None:
        if self.closing.is_set():
            return None  # the soak is being torn down: start nothing that would outlive it
        generation = sum(1 for life in self.lives if life.slot == slot) + 1
        log_path = self.dir / f"scheduler-{slot}.{generation}.log"
        env = self.db.env.env(JOB_MODULE, True, **SETTINGS)
        # UTF-8 mode: stdout takes lone surrogates (surrogateescape) whatever the locale,
        # so that chaos.surrogate tests the scheduler, not the console's encoding.
        env.update(PYTHONUTF8="1", TIME_ZONE="UTC")
        env["PROC_CHAOS_WITHOUT"] = os.environ.get("PROC_CHAOS_WITHOUT", "")
        with open(log_path, "wb") as out:
            popen = subprocess.Popen(
                [PYTHON, "manage.py", "runapscheduler"],
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        life = Life(slot, generation, popen.pid, log_path.name, time.time(), popen=popen)
        with self.lock:
            self.lives.append(life)
            self.current[slot] = life
        self.log(f"started {life.name}")
        return life

    def ended(self, life: Life, fate: str) -> None:
        life.ended = time.time()
        life.fate = fate
        life.exit_code = life.popen.returncode

    def watch(self) -> None:
        """Restart a scheduler that ended without the soak ending it (a crash)."""
        with self.lock:
            lives = list(self.current.values())
        for life in lives:
            if life.expected_exit or life.popen.poll() is None:
                continue
            with self.lock:
                if life.expected_exit:
                    continue
                life.expected_exit = True
            self.ended(life, "exited on its own")
            text = f"{life.name} exited on its own with code {life.exit_code}"
            self.crashes.append((f"exit code {life.exit_code}", text))
            self.log(f"CRASH: {text}; restarting slot {life.slot}")
            self.launch(life.slot)

    def pick(self, rng: random.Random, leader_chance: float) -> Life | None:
        """A running scheduler, not frozen: the active one with ``leader_chance``, else
        another. The same draws whatever the state, so that a seed replays its actions."""
        roll, index = rng.random(), rng.random()
        with self.lock:
            lives = [
                life
                for life in self.current.values()
                if not life.expected_exit and life.pid not in self.frozen
            ]
        if not lives:
            return None
        leader = self.db.leader_pid()
        leaders = [life for life in lives if life.pid == leader]
        others = [life for life in lives if life.pid != leader]
        pool = leaders if leaders and (not others or roll < leader_chance) else others
        return pool[int(index * len(pool))]

    def role(self, life: Life) -> str:
        return "active" if self.db.leader_pid() == life.pid else "standby"

    # -- chaos actions --------------------------------------------------------------
    # Each draws its random figures first: a seed replays the same figures whatever
    # the schedulers did meanwhile.

    def kill9(self, rng: random.Random) -> None:
        restart_after = rng.uniform(0, 2)
        life = self.pick(rng, 0.6)
        if life is None:
            return
        role = self.role(life)
        with self.lock:
            life.expected_exit = True
        life.killed_at = time.time()
        life.popen.kill()
        life.popen.wait(30)
        self.ended(life, "kill -9")
        self.log(f"kill -9 {life.name} ({role})", life.killed_at)
        time.sleep(restart_after)
        self.launch(life.slot)

    def sigstop(self, rng: random.Random) -> threading.Thread | None:
        """Freeze one past its lease; it thaws in the background while other actions go on."""
        frozen = LEASE + rng.uniform(1, 4)
        life = self.pick(rng, 0.7)
        if life is None:
            return None
        role = self.role(life)
        with self.lock:
            self.frozen.add(life.pid)
        start = time.time()
        life.popen.send_signal(signal.SIGSTOP)
        self.log(f"SIGSTOP {life.name} ({role}) for {frozen:.1f} s", start)

        def thaw() -> None:
            try:
                self.closing.wait(frozen)
            finally:
                life.popen.send_signal(signal.SIGCONT)
                end = time.time()
                life.stops.append((start, end))
                with self.lock:
                    self.frozen.discard(life.pid)
                self.log(f"SIGCONT {life.name}", end)

        return self.thread(thaw, "thaw")

    def outage(self, rng: random.Random) -> threading.Thread:
        """A database outage, in the background: other actions may fall within it."""
        child = random.Random(rng.random())

        def outage() -> None:
            self.outages.append(self.db.outage(child, self.log, self.seconds >= 300))

        return self.thread(outage, "outage")

    def sigterm(self, rng: random.Random) -> None:
        restart_after = rng.uniform(0, 2)
        life = self.pick(rng, 0.5)
        if life is None:
            return
        role = self.role(life)
        with self.lock:
            life.expected_exit = True
        life.sigterm_at = time.time()
        life.popen.send_signal(signal.SIGTERM)
        self.log(f"SIGTERM {life.name} ({role})", life.sigterm_at)
        self.wait_exit(life, "SIGTERM")
        time.sleep(restart_after)
        self.launch(life.slot)

    def wait_exit(self, life: Life, fate: str) -> None:
        hung = False
        try:
            life.popen.wait(GRACE + 15)
        except subprocess.TimeoutExpired:
            hung = True
            self.log(f"HUNG: {life.name} still running {GRACE + 15} s after SIGTERM: kill -9")
            # Every thread's stack into its log first (runapscheduler's SIGUSR1 handler).
            life.popen.send_signal(signal.SIGUSR1)
            time.sleep(1)
            life.popen.kill()
            life.popen.wait(30)
        self.ended(life, fate)
        took = life.ended - (life.sigterm_at or life.ended)
        text = f"{life.name} exited with {life.exit_code} {took:.1f} s after SIGTERM ({fate})"
        self.log(text)
        if hung:
            # The evidence a soak in CI (without --keep) leaves: where the process was.
            tail = self.log_tail(life, 120)
            self.bad_exits.append(
                (f"no exit within {GRACE + 15} s of SIGTERM", f"{text}; its log ends:\n{tail}")
            )
        elif life.exit_code == -signal.SIGTERM and not self.was_up(life):
            # Killed by the signal's default action while Python and Django were still
            # loading, before the scheduler could install its handler: nothing had run.
            self.log(f"{life.name} was still loading: SIGTERM's default action ended it")
        elif life.exit_code != 0:
            tail = self.log_tail(life, 40)
            self.bad_exits.append((f"exit code {life.exit_code}", f"{text}; its log ends:\n{tail}"))
        elif took > GRACE + STOP_SETTLE + STOP_SLACK:
            # README: the whole stop takes at most SHUTDOWN_GRACE + 5 s.
            self.bad_exits.append((f"stop longer than SHUTDOWN_GRACE + {STOP_SETTLE} s", text))

    def log_tail(self, life: Life, lines: int) -> str:
        text = (self.dir / life.log_name).read_bytes().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def was_up(self, life: Life) -> bool:
        """Whether the process got as far as logging anything of the scheduler's own."""
        text = (self.dir / life.log_name).read_bytes().decode("utf-8", "replace")
        return bool(STAMP.search(text)) or STARTED_LINE in text

    def chaos(self) -> None:
        rng = random.Random(self.seed)
        actions: dict[str, Callable[[random.Random], threading.Thread | None]] = {
            "kill -9": self.kill9,
            "SIGSTOP": self.sigstop,
            "database outage": self.outage,
            "SIGTERM": self.sigterm,
        }
        names = list(actions)
        round_: list[str] = []
        # SIGSTOP and outages run on in the background; one of each kind at a time.
        background: dict[str, threading.Thread] = {}
        while not self.quiet.wait(rng.uniform(2, 6)):
            if not round_:
                # Shuffled rounds: even a short soak does each action at least once.
                round_ = rng.sample(names, len(names))
            name = round_.pop()
            if name in background:
                background.pop(name).join()
            self.actions[name] += 1
            try:
                running = actions[name](rng)
            except Exception:  # noqa: BLE001 - reported, and the soak fails
                self.errors.append(f"chaos action {name} failed:\n{traceback.format_exc()}")
                self.log(f"SOAK ERROR in {name}: {traceback.format_exc()}")
                continue
            if running is not None:
                background[name] = running
        for running in background.values():
            running.join()

    def request_runs(self) -> None:
        rng = random.Random(self.seed + 1)
        job_ids = sorted(self.jobs)
        last = datetime.min.replace(tzinfo=UTC)
        while not self.stop_requests.wait(rng.expovariate(1 / 1.5)):
            job_id = rng.choice(job_ids)
            at = datetime.now(UTC)
            # A fraction of a second, and distinct: never taken for a cron fire time.
            at = max(at, last + timedelta(microseconds=1))
            if at.microsecond == 0:
                at += timedelta(microseconds=1)
            last = at
            # A third are runs scheduled from code, due up to 3 s ahead (the requests end
            # 8 s before the final stop: each falls due while schedulers run).
            trigger = "code" if rng.random() < 1 / 3 else "manual"
            if trigger == "code":
                at += timedelta(seconds=rng.uniform(0, 3))
                if at.microsecond == 0:  # never a whole second: a cron fire time's
                    at += timedelta(microseconds=1)
            made = time.time()
            try:
                row_id: int | None = self.db.insert_request(job_id, at, trigger)
            except Exception as exc:  # noqa: BLE001 - the database may be away
                row_id = None
                self.log(f"{REQUEST_FAILED} {job_id} failed ({type(exc).__name__}): uncertain")
            self.requests.append(Request(job_id, at, made, row_id, trigger))

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except Exception:  # noqa: BLE001 - reported, and the soak fails
                self.errors.append(f"thread {name} died:\n{traceback.format_exc()}")

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    # -- the run ------------------------------------------------------------------

    def run(self) -> None:
        count = PROCESSES[self.db.kind]
        first = self.launch(1)
        assert first is not None
        SchedulerProcess(first.popen, self.dir / first.log_name).wait_started(ACTIVE_LINE, 120)
        self.t_active = time.time()
        self.log.t0 = self.t_active
        self.log(f"{first.name} is active: the soak starts")
        for slot in range(2, count + 1):
            self.launch(slot)
        end = self.t_active + self.seconds
        chaos = self.thread(self.chaos, "chaos")
        requests = self.thread(self.request_runs, "requests")
        self.threads = [chaos, requests]
        self.supervise(until=end - QUIET_END)
        self.quiet.set()
        # An outage or a frozen process still under way ends first; then the quiet time.
        while chaos.is_alive() and time.time() < end + 120:
            self.watch()
            chaos.join(0.2)
        if chaos.is_alive():
            self.errors.append("the chaos thread did not end")
        self.log("chaos over: quiet until the final stop")
        end = max(end, time.time() + QUIET_END)
        self.supervise(until=end - REQUESTS_END)
        self.stop_requests.set()
        requests.join(60)
        if requests.is_alive():
            self.errors.append("the requests thread did not end")
        self.supervise(until=end)
        self.final_stop()

    def supervise(self, until: float) -> None:
        while time.time() < until:
            self.watch()
            time.sleep(0.2)

    def final_stop(self) -> None:
        with self.lock:
            lives = [life for life in self.current.values() if life.ended is None]
            for life in lives:
                life.expected_exit = True
        self.t_stop = time.time()
        for life in lives:
            life.sigterm_at = time.time()
            life.popen.send_signal(signal.SIGTERM)
        self.log(f"final SIGTERM to {', '.join(life.name for life in lives)}", self.t_stop)
        for life in lives:
            self.wait_exit(life, "final SIGTERM")

    def record(self) -> Record:
        rows = [{k: row[k] for k in ROW_FIELDS} for row in self.db.env.runs()]
        for row in rows:
            row["traceback"] = row["traceback"][-600:]  # the evidence; not whole outputs
        return Record(
            kind=self.db.kind,
            seed=self.seed,
            without=os.environ.get("PROC_CHAOS_WITHOUT", ""),
            t_active=self.t_active,
            t_stop=self.t_stop,
            lives=self.lives,
            requests=self.requests,
            outages=self.outages,
            actions=dict(self.actions),
            crashes=self.crashes,
            bad_exits=self.bad_exits,
            errors=self.errors,
            log_lines=self.log.lines,
            rows=rows,
        )

    def cleanup(self) -> None:
        """Whatever happened, leave no scheduler running (the chaos thread first)."""
        self.quiet.set()
        self.stop_requests.set()
        self.closing.set()
        for thread in self.threads:
            thread.join(GRACE + 30)
        for life in self.lives:
            if life.popen.poll() is None:
                life.popen.send_signal(signal.SIGCONT)
                life.popen.kill()
                life.popen.wait(30)


# -- the checks ------------------------------------------------------------------------------


def read_marks(path: Path) -> list[Mark]:
    marks = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        event, job_id, at, pid, t, what = line.split(" ", 5)
        marks.append(Mark(event, job_id, datetime.fromisoformat(at), int(pid), float(t), what))
    return marks


def fire_times(spec: Any, start: datetime, end: datetime) -> list[datetime]:
    """The job's fire times in [start, end], from its own trigger."""
    trigger = spec.make_trigger()
    times = []
    at = trigger.get_next_fire_time(None, start)
    while at is not None and at <= end:
        times.append(at)
        at = trigger.get_next_fire_time(at, at + timedelta(microseconds=1))
    return times


DIGITS = re.compile(r"\d[\d.:\-]*")
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
CHAINED = re.compile(r"^(During handling of the above|The above exception)")


def tracebacks(text: str) -> list[tuple[int, str, str]]:
    """(line number, the message before, the exception line) of every traceback in a log;
    the message without its time, so that one cause reads the same each time."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("--- Logging error ---"):
            found.append((i + 1, line, "logging error"))
        if not line.startswith("Traceback (most recent call last):"):
            continue
        j = i + 1
        while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
            j += 1
        # The log message it belongs to (a job's output may come in between, or share its line).
        before = next(
            (b for b in reversed(lines[max(0, i - 50) : i]) if STAMP.search(b) or CHAINED.match(b)),
            "",
        )
        if stamp := STAMP.search(before):
            before = before[stamp.start() :]
        last = lines[j] if j < len(lines) else "(cut off)"
        found.append((i + 1, STAMP.sub("", before, count=1), last))
    return found


# A finding: (its category, which groups findings of one cause; the evidence).
Finding = tuple[str, str]


def pairs(findings: list[Any]) -> list[Finding]:
    """Findings as saved (JSON lists; plain strings in older records)."""
    return [(f, f) if isinstance(f, str) else (f[0], f[1]) for f in findings]


class Checker:
    def __init__(self, record: Record, directory: Path) -> None:
        self.soak = record
        self.dir = directory
        self.log = Log(None, record.t_active)
        self.log.lines = record.log_lines
        self.jobs = load_jobs()
        self.marks = read_marks(directory / "marks.txt")
        self.rows = record.rows
        starts: dict[tuple[str, datetime], list[Mark]] = defaultdict(list)
        ends: dict[tuple[str, datetime], list[Mark]] = defaultdict(list)
        for mark in self.marks:
            (starts if mark.event == "start" else ends)[(mark.job_id, mark.at)].append(mark)
        # Plain dicts: looking a key up must not make it a run that started.
        self.starts, self.ends = dict(starts), dict(ends)
        self.by_pid = {life.pid: life for life in record.lives}
        self.results: dict[str, list[Finding]] = {}

    # -- evidence ------------------------------------------------------------------------

    def when(self, value: datetime | None) -> str:
        if value is None:
            return "-"
        return f"{value.astimezone(UTC):%H:%M:%S.%f}"[:-3] + f" ({self.log.rel(value.timestamp())})"

    def process(self, pid: int | None) -> str:
        life = self.by_pid.get(pid) if pid is not None else None
        if life is None:
            return f"pid {pid} (not a soak process)"
        events = []
        for start, end in life.stops:
            events.append(f"SIGSTOP {self.log.rel(start)}..{self.log.rel(end)}")
        if life.ended is not None:
            events.append(f"{life.fate} {self.log.rel(life.ended)} (exit {life.exit_code})")
        return f"{life.name}: " + ", ".join(events or ["running"])

    def row_text(self, row: dict[str, Any]) -> str:
        key = (row["job_id"], row["scheduled_at"])
        marks = [
            f"{m.event} pid {m.pid} {self.log.rel(m.t)} {m.what}"
            for m in sorted(self.starts.get(key, []) + self.ends.get(key, []), key=lambda m: m.t)
        ]
        return (
            f"row #{row['id']} {row['job_id']} {row['trigger']} {row['status']} "
            f"at {self.when(row['scheduled_at'])} started {self.when(row['started_at'])} "
            f"finished {self.when(row['finished_at'])} pid {row['pid']} "
            f"exception {row['exception'][:160]!r}; marks: {marks or 'none'}; "
            f"{self.process(row['pid'])}; chaos before: "
            f"{self.log.before(row['scheduled_at'].timestamp())}"
        )

    # -- the checks ----------------------------------------------------------------------

    def run(self) -> dict[str, list[Finding]]:
        soak = self.soak
        checks: list[tuple[str, Callable[[], list[Finding]]]] = [
            ("duplicate executions", self.duplicate_executions),
            ("fire times without exactly one row", self.fire_times),
            ("run-now requests without a final row", self.requests),
            ("rows left running or queued", self.left_running),
            ("rows contradicting the marks", self.contradictions),
            ("failures without their one next attempt", self.retries),
            ("runs without a row", self.runs_without_row),
            ("jobs that failed only under the scheduler", self.broken_jobs),
            ("runs started after SIGTERM", self.started_after_sigterm),
            ("schedulers that exited on their own", lambda: pairs(soak.crashes)),
            ("bad exits after SIGTERM", lambda: pairs(soak.bad_exits)),
            ("unexpected tracebacks in logs", self.unexpected_tracebacks),
            ("soak errors", lambda: [(t.splitlines()[0], t) for t in soak.errors]),
        ]
        for name, check in checks:
            self.results[name] = check()
        return self.results

    def duplicate_executions(self) -> list[Finding]:
        return [
            (
                job_id,
                f"{job_id} at {self.when(at)}: "
                + "; ".join(f"start pid {m.pid} {self.log.rel(m.t)}" for m in starts),
            )
            for (job_id, at), starts in sorted(self.starts.items())
            if len(starts) > 1
        ]

    def window(self) -> tuple[datetime, datetime]:
        start = datetime.fromtimestamp(self.soak.t_active, UTC).replace(microsecond=0)
        start += timedelta(seconds=1)
        end = datetime.fromtimestamp(self.soak.t_stop - slowest() - 2, UTC)
        return start, end

    def fire_times(self) -> list[Finding]:
        start, end = self.window()
        scheduled: dict[tuple[str, datetime], list[dict]] = defaultdict(list)
        for row in self.rows:
            if row["trigger"] == "schedule":
                scheduled[(row["job_id"], row["scheduled_at"])].append(row)
        found = []
        for job_id, spec in sorted(self.jobs.items()):
            expected = fire_times(spec, start, end)
            for at in expected:
                rows = scheduled.get((job_id, at), [])
                if len(rows) != 1:
                    found.append(
                        (
                            f"{len(rows)} rows",
                            f"{job_id} at {self.when(at)}: {len(rows)} rows "
                            f"{[r['status'] for r in rows]}; marks: "
                            f"{[(m.event, m.pid) for m in self.starts.get((job_id, at), [])]}; "
                            f"chaos around: {self.log.around(at.timestamp())}",
                        )
                    )
            expected_set = set(expected)
            for (row_job, at), rows in scheduled.items():
                if row_job == job_id and start <= at <= end and at not in expected_set:
                    found += [("a row for no fire time", self.row_text(row)) for row in rows]
        return found

    def requests(self) -> list[Finding]:
        manual = {
            (r["job_id"], r["scheduled_at"]): r
            for r in self.rows
            if r["trigger"] in ("manual", "code")
        }
        found = []
        for request in self.soak.requests:
            row = manual.get((request.job_id, request.at))
            if row is None:
                if request.row_id is not None:
                    found.append(
                        (
                            "no row",
                            f"request #{request.row_id} of {request.job_id} at "
                            f"{self.when(request.at)}: no row",
                        )
                    )
            elif row["status"] not in FINAL and not self.waited_its_turn(row):
                found.append((f"left {row['status']}", self.row_text(row)))
        return found

    def busy_spans(self, job_id: str) -> list[tuple[float, float]]:
        """When runs of ``job_id`` (any trigger, any process) were going, from the marks: a
        start without an end lasts until its process ended (or the final stop)."""
        spans = []
        for (job, at), starts in self.starts.items():
            if job != job_id:
                continue
            ends = self.ends.get((job, at), [])
            for start in starts:
                life = self.by_pid.get(start.pid)
                died = life.ended if life is not None and life.ended is not None else None
                end = min((m.t for m in ends), default=died or self.soak.t_stop)
                spans.append((start.t, end))
        return sorted(spans)

    def waited_its_turn(self, row: dict[str, Any]) -> bool:
        """A request left ``queued`` at the clean stop is right only if it never had a free
        slot: from the moment it was made until the final SIGTERM, runs of its job filled
        every one of its ``max_instances`` slots (requests of a slow job pile up behind
        each other; a clean stop leaves the rest queued for the next scheduler)."""
        if row["status"] != "queued" or row["trigger"] not in ("manual", "schedule", "code"):
            return False
        spec = self.jobs.get(row["job_id"])
        slots = spec.max_instances if spec is not None else 1
        begin, stop = row["scheduled_at"].timestamp(), self.soak.t_stop
        spans = self.busy_spans(row["job_id"])
        # Starts before ends at the same instant: a slot handed straight on is not free.
        events = sorted(
            [(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans], key=lambda e: (e[0], -e[1])
        )
        going = 0
        free_since: float | None = begin  # free until shown busy
        for when, step in events:
            going += step
            if going >= slots and free_since is not None:
                if min(when, stop) - max(free_since, begin) > QUEUE_GAP:
                    return False  # a slot stayed free that long: the queue did not move
                free_since = None
            elif going < slots and free_since is None:
                free_since = when
        return free_since is None or stop - max(free_since, begin) <= QUEUE_GAP

    def left_running(self) -> list[Finding]:
        cutoff = datetime.fromtimestamp(self.soak.t_stop - REQUESTS_END + 1, UTC)
        return [
            (f"{row['status']} ({row['trigger']})", self.row_text(row))
            for row in self.rows
            if row["status"] == "running"
            or (
                row["status"] == "queued"
                and row["scheduled_at"] < cutoff
                and not self.waited_its_turn(row)
            )
        ]

    def retries(self) -> list[Finding]:
        """Each failure a job retries has exactly one next attempt, none other has one, and
        no attempt starts before it is due."""
        found: list[Finding] = []
        later: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in self.rows:
            if (row.get("attempt") or 1) > 1:
                later[row["retry_of"]].append(row)
        by_id = {row["id"]: row for row in self.rows}
        for row in self.rows:
            spec = self.jobs.get(row["job_id"])
            retries = (spec.retries or 0) if spec is not None else 0
            attempt = row.get("attempt") or 1
            first = row.get("retry_of") or row["id"]
            nexts = [r for r in later.get(first, []) if r["attempt"] == attempt + 1]
            wanted = (
                row["status"] in ("failed", "timed_out")
                and attempt <= retries
                and "could not start" not in row["exception"]
            )
            if len(nexts) > 1:
                found.append(("an attempt filed twice", self.row_text(row)))
            elif wanted and not nexts:
                found.append(("a failure without its next attempt", self.row_text(row)))
            elif nexts and row["status"] == "succeeded":
                found.append(("a next attempt of a success", self.row_text(row)))
            if attempt > 1 and (by_id.get(first) or {}).get("attempt", 1) != 1:
                found.append(("an attempt whose first is not there", self.row_text(row)))
            started = row["started_at"]
            if row["trigger"] == "retry" and started is not None:
                if started < row["scheduled_at"] - timedelta(seconds=0.05):
                    found.append(("an attempt started before it was due", self.row_text(row)))
        return found

    def interrupted_may_have_ended(self, end: Mark) -> bool:
        """An interrupted row whose body ended: allowed when its process died holding the
        result (see the module docstring)."""
        life = self.by_pid.get(end.pid)
        if life is None:
            return False
        if life.killed_at is not None and life.killed_at >= end.t:
            if life.killed_at - end.t <= RESULT_WINDOW:
                return True
            between = [(o.start, o.end) for o in self.soak.outages] + life.stops
            if any(s <= life.killed_at and e >= end.t for s, e in between):
                return True
        if life.sigterm_at is not None and end.t >= life.sigterm_at + GRACE - 0.5:
            return True
        if life.sigterm_at is not None and life.ended is not None:
            # The stop is bounded: with the database away as it left, the results it
            # held could not be written (ones from before the outage should have been).
            if any(
                o.start <= life.ended <= o.end + 1 and end.t >= o.start - RESULT_WINDOW
                for o in self.soak.outages
            ):
                return True
        return False

    def contradictions(self) -> list[Finding]:
        found = []
        for row in self.rows:
            key = (row["job_id"], row["scheduled_at"])
            starts, ends = self.starts.get(key, []), self.ends.get(key, [])
            status = row["status"]
            outcome = ends[-1].what.split()[0] if ends else None
            why = ""
            if status == "succeeded":
                if not starts:
                    why = "succeeded, but the job never started"
                elif outcome is None:
                    why = "succeeded, but the job never ended"
                elif outcome != "ok":
                    why = "succeeded, but the job failed"
            elif status == "failed":
                if not starts:
                    why = "failed, but the job never started"
                elif outcome is None:
                    why = "failed, but the job never ended (interrupted)"
                elif outcome != "fail":
                    why = "failed, but the job succeeded"
                elif "could not start" in row["exception"]:
                    why = "failed as never started, but the job ran (and failed)"
            elif status in ("missed", "skipped"):
                if starts:
                    why = f"{status}, but the job ran"
            elif status == "interrupted" and ends:
                if not self.interrupted_may_have_ended(ends[-1]):
                    why = "interrupted, but the job ended and its process did not die holding it"
            if why:
                # Grouped by the reason and the row's message: one group, one cause.
                message = DIGITS.sub("N", row["exception"][:70])
                found.append((f"{why}; row says {message!r}", self.row_text(row)))
        return found

    def runs_without_row(self) -> list[Finding]:
        keys = {(row["job_id"], row["scheduled_at"]) for row in self.rows}
        return [
            (
                job_id,
                f"{job_id} at {self.when(at)}: start pid {starts[0].pid} "
                f"{self.log.rel(starts[0].t)}; {self.process(starts[0].pid)}",
            )
            for (job_id, at), starts in sorted(self.starts.items())
            if (job_id, at) not in keys
        ]

    def broken_jobs(self) -> list[Finding]:
        found = []
        for key, starts in sorted(self.starts.items()):
            ends = self.ends.get(key, [])
            if ends and starts[0].what == "ok" and ends[-1].what != "ok":
                found.append(
                    (
                        f"{key[0]} ended {ends[-1].what}",
                        f"{key[0]} at {self.when(key[1])}: meant to succeed, ended "
                        f"{ends[-1].what} (pid {ends[-1].pid})",
                    )
                )
        return found

    def started_after_sigterm(self) -> list[Finding]:
        found = []
        for mark in self.marks:
            life = self.by_pid.get(mark.pid)
            if mark.event != "start" or life is None or life.sigterm_at is None:
                continue
            late = mark.t - life.sigterm_at
            if late > LATE_START:
                found.append(
                    (
                        f"after {life.fate}",
                        f"{mark.job_id} at {self.when(mark.at)} started {late:.2f} s after "
                        f"SIGTERM to {life.name} ({life.fate}); chaos before: "
                        f"{self.log.before(life.sigterm_at + 0.1)}",
                    )
                )
        return found

    def unexpected_tracebacks(self) -> list[Finding]:
        found = []
        for life in self.soak.lives:
            text = (self.dir / life.log_name).read_bytes().decode("utf-8", "replace")
            for number, before, last in tracebacks(text):
                if not TRANSIENT.match(last):
                    category = f"{last[:160]} (after: {DIGITS.sub('N', before[:160])})"
                    found.append((category, f"{life.log_name}:{number}"))
        return found


# -- the report ------------------------------------------------------------------------------


def report(record: Record, checker: Checker, examples: int) -> str:
    lines = []
    duration = record.t_stop - record.t_active
    lines.append(
        f"\n== chaos soak on {record.kind}: {duration:.0f} s, seed {record.seed}, "
        f"{PROCESSES[record.kind]} schedulers, {len(record.lives)} processes started"
    )
    if record.without:
        lines.append(f"jobs left out (--without): {record.without}")
    start, end = checker.window()
    lines.append(f"fire times checked from {start:%H:%M:%S} to {end:%H:%M:%S} UTC")
    lines.append(
        "chaos actions: "
        + ", ".join(f"{name} {n}" for name, n in sorted(record.actions.items()))
        + f"; run-now requests: {len(record.requests)}"
        + f" ({sum(r.row_id is None for r in record.requests)} uncertain)"
    )
    statuses = Counter((row["trigger"], row["status"]) for row in checker.rows)
    lines.append(f"rows: {len(checker.rows)}; marks: {len(checker.marks)}")
    for trigger in ("schedule", "manual", "code", "retry"):
        counts = {s: n for (t, s), n in sorted(statuses.items()) if t == trigger}
        lines.append(f"  {trigger:<8} " + ", ".join(f"{s} {n}" for s, n in counts.items()))
    exits = [f"{life.slot}.{life.generation}:{life.fate}={life.exit_code}" for life in record.lives]
    lines.append("exits: " + " ".join(exits))
    width = max(len(name) for name in checker.results)
    lines.append("")
    lines.append(f"{'check':<{width}}  count")
    lines.append(f"{'-' * width}  -----")
    for name, found in checker.results.items():
        lines.append(f"{name:<{width}}  {len(found):>5}")
    for name, found in checker.results.items():
        if not found:
            continue
        lines.append(f"\n-- {name}: {len(found)}")
        groups: dict[str, list[str]] = defaultdict(list)
        for category, text in found:
            groups[category].append(text)
        for category, texts in sorted(groups.items(), key=lambda item: -len(item[1])):
            lines.append(f"  [{len(texts)}] {category}")
            for text in texts[:examples]:
                lines.append(f"      * {text}")
            if len(texts) > examples:
                lines.append(f"      ... and {len(texts) - examples} more")
    failed = sum(len(found) for found in checker.results.values())
    lines.append(f"\n== {'FAIL' if failed else 'PASS'} on {record.kind} (seed {record.seed})")
    return "\n".join(lines)


def check(record: Record, directory: Path, examples: int) -> bool:
    """Run the checks, print the report (and write it whole to report.txt); True if clean."""
    checker = Checker(record, directory)
    checker.run()
    log = "\n".join(f"{checker.log.rel(t)}  {text}" for t, text in record.log_lines)
    full = report(record, checker, examples=10**9)
    (directory / "report.txt").write_text(f"{full}\n\nchaos log:\n{log}\n")
    print(report(record, checker, examples))
    return not any(checker.results.values())


def soak_one(kind: str, seconds: float, seed: int, keep: bool, examples: int) -> bool:
    directory = Path(tempfile.mkdtemp(prefix=f"scheduler-chaos-{kind}-"))
    print(f"\n== {kind}: {seconds:.0f} s, seed {seed}, files in {directory}", flush=True)
    db: Database = Postgres() if kind == "postgres" else Sqlite()
    soak = Soak(db, directory, seconds, seed)
    try:
        db.setup(directory)
        try:
            soak.run()
        finally:
            soak.cleanup()
        record = soak.record()
        record.save(directory / "record.json")
        return check(record, directory, examples)
    finally:
        db.teardown(directory, keep)
        if keep:
            print(f"kept: {directory} (logs, marks.txt, chaos.log, report.txt, record.json)")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=None, help="replay the chaos of a seed")
    parser.add_argument("--keep", action="store_true", help="keep the logs, marks and report")
    parser.add_argument("--examples", type=int, default=2, help="evidence lines per cause")
    parser.add_argument(
        "--without",
        default="",
        help="job ids to leave out (comma-separated), to see what fails besides a known fault",
    )
    parser.add_argument(
        "--recheck", type=Path, metavar="DIR", help="check a soak kept with --keep again"
    )
    args = parser.parse_args(None if argv is None else list(argv))
    if args.recheck:
        record = Record.load(args.recheck / "record.json")
        os.environ["PROC_CHAOS_WITHOUT"] = record.without
        return 0 if check(record, args.recheck, args.examples) else 1
    if args.seconds < 30:
        parser.error("--seconds must be at least 30 (the last 15 s are quiet)")
    # SIGTERM (a CI timeout) unwinds like Ctrl+C: the schedulers and PostgreSQL are stopped.
    signal.signal(signal.SIGTERM, _terminated)
    # Read by tests/proc/chaos_jobs.py, here and in every scheduler.
    os.environ["PROC_CHAOS_WITHOUT"] = args.without
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
    print(f"seed {seed} (replay with --seed {seed})", flush=True)
    kinds = ["postgres", "sqlite"] if args.db == "both" else [args.db]
    outcomes = {}
    for kind in kinds:
        try:
            outcomes[kind] = soak_one(kind, args.seconds, seed, args.keep, args.examples)
        except ServerUnavailable as exc:
            print(f"cannot run the soak on {kind}: {exc}", file=sys.stderr)
            return 2
    print("\n" + ", ".join(f"{k}: {'PASS' if ok else 'FAIL'}" for k, ok in outcomes.items()))
    return 0 if all(outcomes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
