"""The scheduler process started by ``manage.py runapscheduler``."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from apscheduler.schedulers.background import BackgroundScheduler
from django.conf import settings
from django.utils import timezone

from scheduler import capture, checkins, conf, db, incidents, lease, outbox
from scheduler.claims import ClaimBook
from scheduler.control import Control
from scheduler.jobstore import JobStore
from scheduler.models import JobRun
from scheduler.registry import JobSpec, autodiscover, registry
from scheduler.results import ResultWriter
from scheduler.runner import LOST_LEASE, STOPPED, Executor, Runner
from scheduler.sync import sync

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parts:
    """The working parts of one scheduler process, made once and owned by its service.

    APScheduler's scheduler loop is the one place where the store and the
    executor meet; the claim book is handed to both (the store's due jobs are
    claimed through it, the executor takes their claims from it), and every
    path records through the one result writer.
    """

    results: ResultWriter
    runner: Runner
    book: ClaimBook
    store: JobStore
    executor: Executor
    scheduler: BackgroundScheduler


def make_parts(standing: lease.Standing | None = None) -> Parts:
    results = ResultWriter()
    run = Runner(standing, results)
    book = ClaimBook(run.claims)
    store, executor = JobStore(book=book), Executor(conf.get("THREADS"), run, book)
    sent = {spec.effective_executor for spec in registry.values()} - {"local"}
    if sent:
        from scheduler.fleet import FleetRunExecutor  # loaded only when a job is sent

        for name in sorted(sent):
            fleet = FleetRunExecutor(run, executor.hand_over, name, executor.release)
            executor.add_fleet(name, fleet)
    scheduler = BackgroundScheduler(
        jobstores={"default": store},
        executors={"default": executor},
        timezone=settings.TIME_ZONE,
        jobstore_retry_interval=2,
    )
    return Parts(results, run, book, store, executor, scheduler)


def make_scheduler() -> BackgroundScheduler:
    """A scheduler with this project's store and executor, for a process on its own (the
    benchmarks' probes, tests): no lease, results written at once."""
    return make_parts().scheduler


def recover_local_orphans() -> int:
    """Mark ``running`` rows left by a dead process on this host as interrupted.

    This catches what the lease cannot: ``runjob`` runs, and runs of a crashed
    scheduler before any standby notices. A process counts as dead when no
    process has its pid, or the one that has it started after the row was
    written (pids are reused, and in containers every scheduler is pid 1).
    """
    runs = JobRun.objects.filter(status=JobRun.Status.RUNNING, hostname=conf.HOSTNAME)
    rows = runs.values_list("id", "pid", "started_at")
    dead = [pk for pk, pid, started in rows if pid is None or not lease.pid_alive(pid, started)]
    if not dead:
        return 0
    return runs.filter(pk__in=dead).update(
        status=JobRun.Status.INTERRUPTED,
        finished_at=timezone.now(),
        exception="Interrupted: the process running it died (found at the next start).",
    )


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Seconds, past SHUTDOWN_GRACE, to write the last results and leave; then the process
# leaves anyway (the database may be away, or hang: SQLite waits out its busy timeout
# inside one call, where no signal handler runs).
SETTLE_SECONDS = 4.5
# Seconds a stop signal during start-up may wait for the main thread to notice it.
STARTUP_STOP_SECONDS = 1.0


class _SignalPipe(threading.Thread):
    """Hears a stop signal at once, even while the main thread is inside a database call
    (SQLite's busy wait, a connection attempt), where Python runs no signal handler."""

    def __init__(self, heard: Callable[[int], None]) -> None:
        super().__init__(name="scheduler-signals", daemon=True)
        self.heard = heard
        self._read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def run(self) -> None:
        # The signals themselves go to the main thread (see ``Service.start``).
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        while data := os.read(self._read, 64):
            for signum in data:
                if signum in STOP_SIGNALS:
                    self.heard(signum)


class StartupStopped(Exception):
    """A stop signal arrived before the scheduler was up."""


class Service:
    def __init__(self, write: Callable[[str], None] = print) -> None:
        self.write = write
        self.stop_event = threading.Event()
        self.reason = ""
        self.grace_over = False
        self.specs: dict[str, JobSpec] = {}
        # Made at start-up, once the jobs are known: everything the process runs with.
        self.parts: Parts | None = None
        self.control: Control | None = None
        self.leadership: lease.Leadership | None = None
        # Incidents found in the history (while active) and the alerts they send.
        self.detector: incidents.Detector | None = None
        self.outbox: outbox.Outbox | None = None
        self.checkins: checkins.CheckIns | None = None
        # Taking over and stopping must not interleave: a take-over finishing after
        # a stop signal would resume the main loop the stop just paused.
        self._role_lock = threading.Lock()
        self._stopping = False
        self._up = False  # past start-up: the stop signal's handler takes it from here

    def request_stop(self, signum: int, frame: object = None) -> None:
        name = signal.Signals(signum).name
        if self.stop_event.is_set():
            logger.warning("Received %s again: not waiting for running jobs any more.", name)
            self.grace_over = True
            return
        logger.info("Received %s: finishing running jobs, starting no new ones.", name)
        self.reason = name
        self.stop_event.set()
        # At once, from the handler: no worker starts a run from here on.
        if self.parts is not None:
            self.parts.executor.stop_starting()

    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def _parts(self) -> Parts:
        assert self.parts is not None, "the service has not started"
        return self.parts

    def elected(self) -> None:
        """This process just took the lease: bring the store up to date and start running."""
        parts = self._parts()
        store = parts.store
        report = sync(parts.scheduler, store, self.specs)
        store.activate()
        # Pauses made in the admin while no scheduler was active apply before any catch-up.
        assert self.control is not None, "the control thread is made before the lease"
        self.control.apply_pause_changes()
        if self.detector is not None:
            previous = self.leadership.previous_holder if self.leadership else None
            self.detector.took_over(previous)
        with self._role_lock:
            if self._stopping:
                return
            self.write(f"Active scheduler now; jobs: {report}.")
            parts.scheduler.resume()

    def demoted(self) -> None:
        parts = self._parts()
        with self._role_lock:
            if self._stopping:
                # The stop pauses the main loop, gives the claims back and shuts the
                # scheduler down itself (the chaos soak found the lease running out
                # during a stop, and this pause raising on a scheduler already shut down).
                return
            parts.scheduler.pause()
        # The fire times claimed ahead are the next active scheduler's to run.
        with parts.scheduler._jobstores_lock:
            # (Not for long: the database may be why the lease was lost.)
            parts.book.release(LOST_LEASE, timeout=2)
        parts.store.deactivate()
        self.write("Lost the leader lease: standing by.")

    def heard(self, signum: int) -> None:
        """A stop signal, as the signal pipe hears it (in its own thread)."""
        if self._up:
            return  # the handler in the main thread does the rest
        name = signal.Signals(signum).name

        def leave() -> None:
            if not self._up:
                logger.warning("Received %s while starting up: stopping now.", name)
                self.write(f"Scheduler stopped ({name}) before it was up.")
                _leave(0)

        timer = threading.Timer(STARTUP_STOP_SECONDS, leave)
        timer.daemon = True
        timer.start()

    def run(self) -> None:
        # ``kill -USR1 <pid>`` prints every thread's stack to stderr, even when the main
        # thread is stuck in C: how a scheduler that does not stop can be diagnosed
        # (the chaos soak does it to a process that outlives its stop).
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.request_stop)
        _SignalPipe(self.heard).start()
        try:
            leadership, control = self.start()
        except StartupStopped:
            self.write(f"Scheduler stopped ({self.reason}) before it was up.")
            return
        self._up = True
        # Threads started before this command (by settings or imported libraries) can
        # still take a stop signal; waking now and then runs its handler all the same.
        while not self.stop_event.wait(0.25):
            pass
        self.shutdown(control, leadership)

    def start(self) -> tuple[lease.Leadership, Control]:
        """Everything up to running: stops at once, without a traceback, on a stop signal."""
        self.specs = autodiscover()
        capture.install()
        try:
            # A database without the scheduler's tables fails here, in one line.
            db.retrying(db.check_migrated, "read the migrations", should_stop=self.stopping)
            recovered = db.retrying(
                recover_local_orphans, "recover orphaned runs", should_stop=self.stopping
            )
        except Exception as exc:
            if self.stopping() and db.is_transient(exc):
                raise StartupStopped from exc
            raise
        if recovered:
            logger.warning("Marked %d run(s) of a dead process as interrupted.", recovered)
        if self.stopping():
            raise StartupStopped
        # Python runs signal handlers in the main thread, but the kernel hands a
        # process-directed signal to any thread that does not block it; the main
        # thread, asleep in a lock, would never hear of it. Every thread started from
        # here on inherits the block, and the main thread lifts it for itself below.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            leadership = self.leadership = lease.Leadership(self.elected, self.demoted)
            parts = self.parts = make_parts(leadership)
            parts.results.start()
            # Paused until this process holds the lease.
            parts.scheduler.start(paused=True)
            control = self.control = Control(
                parts.scheduler, parts.store, parts.executor, self.stop_event
            )
            self.outbox = outbox.Outbox(outbox.configured_notifiers(), leadership)
            # Per-run check-ins (Healthchecks pings, Sentry Crons) of the runs of this
            # process, from a thread of their own.
            self.checkins = checkins.CheckIns()
            self.checkins.start()
            checkins.connect(self.checkins)
            control.detector = self.detector = incidents.Detector(
                incidents.Incidents(self.outbox.names, self.outbox.wake), leadership
            )
            self.outbox.start()
            leadership.start()
            control.start()
        finally:
            if hasattr(signal, "pthread_sigmask"):
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if self.stopping():  # the handler ran before the executor existed
            parts.executor.stop_starting()
        self.write(
            f"Scheduler started (pid {os.getpid()}, instance {leadership.instance_id[:8]}, "
            f"database {conf.database()!r}): {len(self.specs)} job(s) in code. "
            "Stop with Ctrl+C or SIGTERM."
        )
        return leadership, control

    def shutdown(self, control: Control, leadership: lease.Leadership) -> None:
        """Start nothing more, let running jobs finish within the grace, record the rest,
        give the lease up, and leave: within SHUTDOWN_GRACE + SETTLE_SECONDS whatever the
        database does."""
        grace = conf.get("SHUTDOWN_GRACE")
        began = time.monotonic()
        deadline = began + grace
        hard = deadline + SETTLE_SECONDS
        writes_end = hard - 0.5  # the last writes give up here, before the watchdog below
        # Whatever hangs below (a database that does not answer), the process leaves.
        watchdog = threading.Timer(hard - began, _leave_now)
        watchdog.daemon = True
        watchdog.start()
        parts = self._parts()
        executor, scheduler, run = parts.executor, parts.scheduler, parts.runner
        executor.stop_starting()
        with self._role_lock:
            self._stopping = True
            # A pass of the main loop under way ends; none starts after it.
            scheduler.pause()
        locked = scheduler._jobstores_lock.acquire(timeout=SETTLE_SECONDS)
        try:
            # The claims a finished pass made are closed here, and a pass that still
            # starts finds nothing due.
            parts.store.close()
            executor.close(STOPPED, timeout=2)
        finally:
            if locked:
                scheduler._jobstores_lock.release()
        # Submissions no worker picked up yet: recorded missed, or queued again if manual.
        executor.cancel_waiting()
        if locked:
            # Writes the next run times back (while the lease is ours) and ends the main loop.
            scheduler.shutdown(wait=False)
        leadership.step_down()

        while run.active_runs() and time.monotonic() < deadline and not self.grace_over:
            time.sleep(0.05)
        left = run.active_runs()
        interrupted = 0
        if left:
            reason = (
                f"Interrupted: the scheduler received {self.reason or 'a stop signal'} and the "
                f"run did not finish within the shutdown grace ({grace} s)."
            )
            try:
                interrupted = run.interrupt(
                    list(left), reason, max(0.1, writes_end - time.monotonic())
                )
            except Exception as exc:
                logger.error("Could not mark %d running job(s) interrupted: %s", len(left), exc)
            # Children of runs in a process die with the scheduler, not after it.
            run.isolation.kill_all(reason)
        # Results still waiting for the writer thread, before the lease row says stopped.
        parts.results.stop(writes_end)
        if self.outbox is not None:
            # An alert being sent may finish; the rest wait in the outbox for the next one.
            self.outbox.stop(timeout=max(0.0, min(1.0, writes_end - time.monotonic())))
        if self.checkins is not None:
            # The runs have ended: their last pings are queued; sent until the deadline.
            checkins.disconnect(self.checkins)
            self.checkins.stop(min(writes_end, time.monotonic() + 2.0))
        leadership.finish()
        control.join(timeout=max(0.0, writes_end - time.monotonic()))
        self.write(
            f"Scheduler stopped ({self.reason or 'stop'}): "
            f"{interrupted} running job(s) marked interrupted."
        )
        # Worker threads still inside a job, and threads a job started and left
        # behind, cannot be stopped from Python and would keep the interpreter
        # waiting for them; every row is final (or as final as the database let it
        # be), so leave without waiting for them.
        _leave(0)


def _leave(code: int) -> None:
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _leave_now() -> None:
    # The stop was obeyed; what could not be written is settled at the next start.
    logger.error(
        "The database did not answer within the shutdown grace: leaving now; rows left "
        "running are marked interrupted at the next start."
    )
    _leave(0)
