"""Claims of scheduled runs, written in groups.

Every scheduled run is claimed by inserting its ``running`` row before the job
is called (the fence: a unique (job id, fire time) lets one claim win). When
twenty jobs fall due in the same second, twenty single-row INSERTs queue for
the database one after another (SQLite has one writer), and the twentieth job
starts late. Here the threads that want a claim at the same time share one
multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING``: the first thread
writes what has gathered, and hands the next group to the first thread that
arrived meanwhile.

The active scheduler's main loop claims the runs it is about to hand to free
workers itself, all in one statement (``claim_many``), so that twenty jobs
due together start without waiting on the database twenty times.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from apscheduler.job import Job
from django.db import connections
from django.db.models import Field

from scheduler import bulk, conf, db
from scheduler.lease import Standing
from scheduler.models import JobRun
from scheduler.registry import registry
from scheduler.results import ResultWriter

logger = logging.getLogger(__name__)


class _Claim:
    __slots__ = ("run", "won", "error", "done", "lead", "ready")

    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.won = False
        self.error: BaseException | None = None
        self.done = False
        self.lead = False
        self.ready = threading.Event()


class Claims:
    """This process's claims of scheduled runs: single claims written in groups
    (``claim``), the main loop's many in one statement (``claim_many``), and claims made
    ahead given back (``withdraw``). Owned by the service, through its runner."""

    def __init__(self, standing: Standing, results: ResultWriter) -> None:
        self.standing = standing
        self.results = results
        self._lock = threading.Lock()
        self._pending: list[_Claim] = []
        self._writing = False

    def new_row(self, job_id: str, job_name: str, at: datetime) -> JobRun:
        """The (unsaved) ``running`` row that claims ``at`` for this process."""
        return JobRun.objects.claim_row(job_id, job_name, at, self.standing.instance_id)

    def claim(self, run: JobRun, timeout: float | None = None) -> bool:
        """Insert ``run``'s row; False if that (job, fire time) is someone else's already.

        Retries through outages for up to ``timeout`` seconds (``DB_RETRY_TIMEOUT``), then
        raises the database error.
        """
        mine = _Claim(run)
        with self._lock:
            self._pending.append(mine)
            if not self._writing:
                self._writing = mine.lead = True
        while not mine.done:
            if not mine.lead:
                mine.ready.wait()
                mine.ready.clear()
            if mine.lead and not mine.done:
                self._write_group(timeout)
        if mine.error is not None:
            raise mine.error
        return mine.won

    def claim_many(self, runs: list[JobRun]) -> list[JobRun]:
        """Insert the rows in one statement, in this thread, without retrying; the runs that
        won."""
        won = self._insert(runs)
        return [run for run in runs if id(run) in won]

    def _write_group(self, timeout: float | None) -> None:
        with self._lock:
            group = list(self._pending)
            self._pending.clear()
        try:
            runs = [entry.run for entry in group]
            won = db.retrying(lambda: self._insert(runs), "record the start of runs", timeout)
            for entry in group:
                entry.won = id(entry.run) in won
        except BaseException as exc:  # every waiting thread must learn of it, whatever it is
            for entry in group:
                entry.error = exc
        with self._lock:
            for entry in group:
                entry.done = True
                entry.lead = False
            if self._pending:
                self._pending[0].lead = True
                self._pending[0].ready.set()
            else:
                self._writing = False
        for entry in group:
            entry.ready.set()

    def _insert(self, runs: list[JobRun]) -> set[int]:
        won = insert(runs)
        self.results.opened(run for run in runs if id(run) in won)
        return won

    def withdraw(self, runs: list[JobRun], timeout: float | None = None) -> bool:
        """Delete claims made ahead for fire times that did not come: no run was due.

        Done at once or not at all: a row deleted later, after another scheduler
        found the fire time taken and skipped it, would leave that fire time with
        no row. False when it could not be done (the caller records them missed).
        """
        ids = [run.pk for run in runs]
        try:
            db.retrying(
                lambda: JobRun.objects.filter(pk__in=ids, status=JobRun.Status.RUNNING).delete(),
                "give back fire times claimed ahead",
                WITHDRAW_TIMEOUT if timeout is None else min(timeout, WITHDRAW_TIMEOUT),
            )
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            logger.warning("Could not give back %d fire time(s) claimed ahead: %s", len(ids), exc)
            return False
        self.results.closed(ids)
        return True


# The columns a claim writes; the other text columns are empty and the rest NULL.
_COLUMNS: tuple[str, ...] = ("job_id", "job_name", "status", "trigger", "scheduled_at")
_COLUMNS += ("started_at", "hostname", "pid", "instance")
_EMPTY = ("requested_by", "exception", "traceback", "output")


@functools.lru_cache(maxsize=64)
def _sql(vendor: str, count: int) -> str:
    # Built once per number of rows (on PostgreSQL once: the rows come as arrays):
    # composing SQL through the ORM for every claim cost more than running it.
    connection = connections[conf.database()]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(column) for column in _COLUMNS + _EMPTY)
    if vendor == "postgresql":
        # Concrete columns of JobRun, no relations.
        fields = [cast("Field[Any, Any]", JobRun._meta.get_field(c)) for c in _COLUMNS]
        values = ", ".join([f"u.c{i}" for i in range(len(fields))] + ["''"] * len(_EMPTY))
        rows = f"SELECT {values} FROM {bulk.unnest(fields, connection)}"
    else:
        marks = ["%s"] * len(_COLUMNS) + ["''"] * len(_EMPTY)
        row = f"({', '.join(marks)})"
        rows = f"VALUES {', '.join([row] * count)}"
    return (
        f"INSERT INTO {qn(JobRun._meta.db_table)} ({columns}) {rows} ON CONFLICT DO NOTHING "
        f"RETURNING {qn('id')}, {qn('job_id')}, {qn('scheduled_at')}"
    )


def insert(runs: list[JobRun]) -> set[int]:
    """One INSERT for the runs; the ids (of the Python objects) of the runs that won."""
    connection = connections[conf.database()]
    when = bulk.datetime_adapter(connection)
    params: list[Any] = []
    keys: dict[tuple[str, float], JobRun] = {}
    for run in runs:
        scheduled_at = when(run.scheduled_at)
        params += (run.job_id, run.job_name, run.status, run.trigger, scheduled_at)
        params += (when(run.started_at), run.hostname, run.pid, run.instance)
        keys[(run.job_id, _key(scheduled_at))] = run
    if connection.vendor == "postgresql":  # one array per column
        width = len(_COLUMNS)
        params = [params[i::width] for i in range(width)]
    with db.writing(), db.cursor() as cursor:
        cursor.execute(_sql(connection.vendor, len(runs)), params)
        returned = cursor.fetchall()
    won = set()
    for pk, job_id, scheduled_at in returned:
        winner = keys.get((job_id, _key(scheduled_at)))
        if winner is not None:
            winner.pk = pk
            winner._state.adding = False
            winner._state.db = conf.database()
            won.add(id(winner))
    return won


def _key(value: datetime | str) -> float:
    """A fire time as sent or returned: UTC text or naive datetime on SQLite, aware elsewhere."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


# -- the claim book: claims of the main loop, until their fire times are submitted ------

# How far ahead the main loop claims fire times when it claims at all: under load
# (200 jobs a second, each due at its own moment), one INSERT then covers the next
# twenty runs instead of one; a single write after the main loop slept cost as
# much CPU as plain APScheduler's whole run.
CLAIM_AHEAD = timedelta(milliseconds=100)
# How long before a fire time that nobody claimed yet the main loop wakes to claim it
# (with what falls due within CLAIM_AHEAD), so that the INSERT is not on the fire time's
# path: at the fire time the run is handed to a worker at once. The claim took 1-3 ms,
# more when it met the lease's or the results' write; that was the lateness tail of
# twenty jobs due in the same second (p99 6 ms on SQLite, 9 ms on PostgreSQL, against
# 2.2 ms for plain APScheduler). Below CLAIM_AHEAD, so that the fire time woken for is
# among those claimed.
CLAIM_LEAD = timedelta(milliseconds=40)
# Seconds a give-back waits for the database; it runs in the main loop or while stopping.
WITHDRAW_TIMEOUT = 2.0


class Slots(Protocol):
    """What the claim book asks of the executor."""

    closed: bool

    def free_workers(self) -> int: ...

    def slots_taken(self, job: Job) -> bool: ...


class Claimed:
    """The runs the main loop claimed for one job: those it is about to submit (one, or
    several with ``coalesce=False``), or one fire time claimed ahead of its time."""

    __slots__ = ("runs", "tried", "ahead")

    def __init__(self, runs: list[JobRun], tried: list[datetime], ahead: bool) -> None:
        self.runs = runs  # the claims that won
        self.tried = tried  # the fire times it tried to claim (a lost one is another's)
        self.ahead = ahead  # claimed before its fire time

    @property
    def first(self) -> datetime:
        return self.tried[0]


class ClaimBook:
    """The one home of the main loop's claims, between the job store (which hands it the
    due jobs and says when a job changes) and the executor (which takes a job's claims
    when it submits the job, and gives the rest back when it stops).

    Before the main loop submits the jobs that are due, :meth:`claim_due` claims
    every fire time it is about to submit, in one INSERT in the main loop's
    thread, together with the fire times due within ``CLAIM_AHEAD`` that free
    workers can take: a worker then has nothing to write before calling the
    job, and no fire time moves past its job's next run time without a row. If
    that INSERT fails because the database is away, it raises: the main loop
    submits nothing and advances no job. A fire time claimed ahead that does not
    come as claimed (the job was paused, changed or removed; the scheduler
    stopped first) is given back: its row is deleted, as no run was due; after
    the lease was lost, it is recorded missed instead (another scheduler may
    have found it taken already). Used by the main loop's thread only (or, with
    the main loop paused, by the thread that stops it).
    """

    def __init__(self, claims: Claims) -> None:
        self.claims = claims
        self._claimed: dict[str, Claimed] = {}
        self.slots: Slots | None = None  # set by the executor
        # The fire time the main loop last woke early for (see CLAIM_LEAD): once is enough.
        self._led: datetime | None = None

    def wake_time(self, next_run_time: datetime | None) -> datetime | None:
        """When the main loop should wake for ``next_run_time``: ``CLAIM_LEAD`` before it,
        to claim it ahead, unless that was done (or tried) already."""
        if next_run_time is None or next_run_time == self._led:
            return next_run_time
        if any(claimed.first == next_run_time for claimed in self._claimed.values()):
            return next_run_time
        return next_run_time - CLAIM_LEAD

    def claim_soon(
        self,
        next_run_time: datetime | None,
        now: datetime,
        due_between: Callable[[datetime, datetime], list[Job]],
    ) -> None:
        """The main loop woke with nothing due: claim ahead what falls due within
        ``CLAIM_AHEAD``, once per next fire time, if that is within ``CLAIM_AHEAD``.

        (Not only within ``CLAIM_LEAD``: the main loop's wait is counted from the start
        of its previous round, so it wakes that round's length early.)
        """
        if next_run_time is None or next_run_time == self._led:
            return
        if next_run_time - now > CLAIM_AHEAD:
            return  # woken for something else (a job changed): too early
        self._led = next_run_time
        slots = self.slots
        assert slots is not None, "the claim book has no executor"
        self._close_stale({}, now)
        if slots.closed or not self.claims.standing.holds():
            return
        groups = self._ahead(now, slots, slots.free_workers(), {}, due_between)
        if groups:
            self._claim(groups)

    def claim_due(
        self,
        jobs: list[Job],
        now: datetime,
        due_between: Callable[[datetime, datetime], list[Job]] | None = None,
    ) -> None:
        """Claim the fire times of ``jobs`` that the main loop will submit for ``now``
        (and, with ``due_between``, those due within ``CLAIM_AHEAD``)."""
        slots = self.slots
        assert slots is not None, "the claim book has no executor"
        due = {job.id: job for job in jobs}
        self._close_stale(due, now)
        if not jobs or slots.closed or not self.claims.standing.holds():
            return
        free = slots.free_workers()
        groups: list[tuple[Job, list[JobRun], bool]] = []
        for job in jobs:
            if job.id in self._claimed:
                free -= 1  # claimed ahead: it starts now too
                continue
            if slots.slots_taken(job):
                continue  # the executor records it skipped
            times = job._get_run_times(now)
            if job.coalesce:
                times = times[-1:]
            times = [at for at in times if not too_late(job, at)]
            if times:
                groups.append((job, [self._new_claim(job, at) for at in times], False))
                free -= 1
        if not groups:
            return  # nothing due needs a claim now: no statement at all
        if due_between is not None:
            groups += self._ahead(now, slots, free, due, due_between)
        self._claim(groups)

    def _ahead(
        self,
        now: datetime,
        slots: Slots,
        free: int,
        due: dict[str, Job],
        due_between: Callable[[datetime, datetime], list[Job]],
    ) -> list[tuple[Job, list[JobRun], bool]]:
        """Claims of the fire times due within ``CLAIM_AHEAD``, as many as workers are free."""
        groups: list[tuple[Job, list[JobRun], bool]] = []
        if free <= 0:
            return groups
        for job in due_between(now, now + CLAIM_AHEAD):
            if free <= 0:
                break
            if job.id in self._claimed or job.id in due or slots.slots_taken(job):
                continue
            groups.append((job, [self._new_claim(job, job.next_run_time)], True))
            free -= 1
        return groups

    def _claim(self, groups: list[tuple[Job, list[JobRun], bool]]) -> None:
        try:
            won = {id(run) for run in self.claims.claim_many([r for _, g, _ in groups for r in g])}
        except Exception as exc:
            if db.is_transient(exc):
                db.close_broken()
            raise
        for job, runs, ahead in groups:
            mine = [run for run in runs if id(run) in won]
            if mine or not ahead:
                self._claimed[job.id] = Claimed(mine, [r.scheduled_at for r in runs], ahead)

    def get(self, job_id: str) -> Claimed | None:
        return self._claimed.get(job_id)

    def pop(self, job_id: str) -> Claimed | None:
        """A job's claims, taken by the executor as it submits the job."""
        return self._claimed.pop(job_id, None)

    def job_changed(self, job_id: str, next_run_time: datetime | None) -> None:
        """A job was paused, changed or removed (or its next run time advanced)."""
        claimed = self._claimed.get(job_id)
        if claimed is not None and claimed.ahead and claimed.first != next_run_time:
            del self._claimed[job_id]
            self.give_back(claimed, "Missed: the job changed before the run could start.")

    def release(self, reason: str, timeout: float | None = None) -> None:
        """Give back every claim not submitted yet (the scheduler stops or steps down)."""
        while self._claimed:
            self.give_back(self._claimed.popitem()[1], reason, timeout)

    def _close_stale(self, due: dict[str, Job], now: datetime) -> None:
        """Give back the claims whose fire time came without the main loop submitting it."""
        stale = []
        for job_id, claimed in self._claimed.items():
            job = due.get(job_id)
            if job is None and claimed.first > now:
                continue  # still ahead
            if job is not None and job.next_run_time == claimed.first:
                continue  # due now, about to be submitted
            stale.append(job_id)
        for job_id in stale:
            self.give_back(
                self._claimed.pop(job_id),
                "Missed: the scheduler claimed this fire time but did not start it.",
            )

    def give_back(self, claimed: Claimed, reason: str, timeout: float | None = None) -> None:
        # A fire time claimed ahead and not submitted did not come as claimed, or
        # comes after this scheduler stopped: a later start catches up on it.
        # One claimed when it was due, and not submitted, was missed.
        claims = self.claims
        if claimed.ahead and claims.standing.holds() and claims.withdraw(claimed.runs, timeout):
            return
        for run in claimed.runs:
            claims.results.abandon(run, JobRun.Status.MISSED, reason)

    def _new_claim(self, job: Job, at: datetime) -> JobRun:
        spec = registry.get(job.id)
        run = self.claims.new_row(job.id, spec.name if spec else job.name, at)
        # Claimed ahead: the planned start until the run records its real one.
        run.started_at = max(run.started_at or at, at)
        return run


def too_late(job: Job, run_time: datetime) -> str:
    """Why ``run_time`` must not start now (beyond the job's grace time), or ''."""
    return beyond_grace(job.misfire_grace_time, run_time)


def beyond_grace(grace: float | None, run_time: datetime) -> str:
    """Why ``run_time`` must not start now, ``grace`` seconds allowed (None: any), or ''."""
    late = datetime.now(UTC) - run_time
    if grace is not None and late > timedelta(seconds=grace):
        return (
            f"Missed: would have started {late.total_seconds():.0f} s late, "
            f"beyond misfire_grace_time ({grace} s)."
        )
    return ""
