"""The scheduler process started by ``manage.py runapscheduler``."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from django.conf import settings
from django.utils import timezone

from scheduler import capture, conf, db, lease, results, runner
from scheduler.control import Control
from scheduler.jobstore import JobStore
from scheduler.models import JobRun
from scheduler.registry import JobSpec, autodiscover
from scheduler.sync import sync

logger = logging.getLogger(__name__)


def make_scheduler() -> BackgroundScheduler:
    store, executor = JobStore(), runner.Executor(conf.get("THREADS"))
    # The main loop's due jobs are claimed in one statement before it submits them,
    # and claims made ahead are given back when their job changes.
    store.on_due = executor.claim_due
    store.on_change = executor.job_changed
    return BackgroundScheduler(
        jobstores={"default": store},
        executors={"default": executor},
        timezone=settings.TIME_ZONE,
        jobstore_retry_interval=2,
    )


def recover_local_orphans() -> int:
    """Mark ``running`` rows left by a dead process on this host as interrupted.

    This catches what the lease cannot: ``runjob`` runs, which belong to no
    scheduler instance.
    """
    runs = JobRun.objects.using(db.alias()).filter(
        status=JobRun.Status.RUNNING, hostname=runner.HOSTNAME
    )
    pids = set(runs.exclude(pid=os.getpid()).values_list("pid", flat=True))
    dead = [pid for pid in pids if pid is None or not lease.pid_alive(pid)]
    if not dead:
        return 0
    return runs.filter(pid__in=dead).update(
        status=JobRun.Status.INTERRUPTED,
        finished_at=timezone.now(),
        exception="Interrupted: the process running it died (found at the next start).",
    )


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Service:
    def __init__(self, write: Callable[[str], None] = print) -> None:
        self.write = write
        self.stop_event = threading.Event()
        self.reason = ""
        self.grace_over = False
        self.specs: dict[str, JobSpec] = {}
        self.scheduler: BackgroundScheduler | None = None
        self.control: Control | None = None

    def request_stop(self, signum: int, frame: object = None) -> None:
        name = signal.Signals(signum).name
        if self.stop_event.is_set():
            logger.warning("Received %s again: not waiting for running jobs any more.", name)
            self.grace_over = True
            return
        logger.info("Received %s: finishing running jobs, starting no new ones.", name)
        self.reason = name
        self.stop_event.set()

    def elected(self) -> None:
        """This process just took the lease: bring the store up to date and start running."""
        store = self.scheduler._jobstores["default"]
        report = sync(self.scheduler, store, self.specs)
        store.activate()
        # Pauses made in the admin while no scheduler was active apply before any catch-up.
        self.control.apply_pause_changes()
        self.write(f"Active scheduler now; jobs: {report}.")
        self.scheduler.resume()

    def demoted(self) -> None:
        self.scheduler.pause()
        # The fire times claimed ahead are the next active scheduler's to run.
        with self.scheduler._jobstores_lock:
            # (Not for long: the database may be why the lease was lost.)
            self.scheduler._lookup_executor("default").release_claims(
                "Missed: this scheduler lost its lease before the run could start.", timeout=2
            )
        self.scheduler._jobstores["default"].deactivate()
        self.write("Lost the leader lease: standing by.")

    def run(self) -> None:
        self.specs = autodiscover()
        capture.install()
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.request_stop)
        # Python runs signal handlers in the main thread, but the kernel hands a
        # process-directed signal to any thread that does not block it; the main
        # thread, asleep in a lock, would never hear of it. Every thread started from
        # here on inherits the block, and the main thread lifts it for itself below.
        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

        results.start()
        recovered = db.retrying(recover_local_orphans, "recover orphaned runs")
        if recovered:
            logger.warning("Marked %d run(s) of a dead process as interrupted.", recovered)

        self.scheduler = make_scheduler()
        # Paused until this process holds the lease.
        self.scheduler.start(paused=True)
        executor = self.scheduler._lookup_executor("default")
        leadership = lease.Leadership(self.elected, self.demoted)
        control = self.control = Control(self.scheduler, executor, self.stop_event)
        leadership.start()
        control.start()
        self.write(
            f"Scheduler started (pid {os.getpid()}, instance {leadership.instance_id[:8]}, "
            f"database {db.alias()!r}): {len(self.specs)} job(s) in code. "
            "Stop with Ctrl+C or SIGTERM."
        )

        if hasattr(signal, "pthread_sigmask"):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        # Threads started before this command (by settings or imported libraries) can
        # still take a stop signal; waking now and then runs its handler all the same.
        while not self.stop_event.wait(0.25):
            pass
        self.shutdown(executor, control, leadership)

    def shutdown(
        self, executor: runner.Executor, control: Control, leadership: lease.Leadership
    ) -> None:
        control.join(timeout=5)
        # Pause the main loop and wait for its current pass (it holds the job stores'
        # lock), so that nothing is submitted to a pool that is shutting down; then cancel
        # the submissions no worker has picked up yet: they are recorded missed, or
        # queued again if manual.
        self.scheduler.pause()
        with self.scheduler._jobstores_lock:
            # A pass already under way is over; the claims it made are closed here,
            # and a pass that still starts finds nothing due.
            self.scheduler._jobstores["default"].close()
            executor.close("Missed: the scheduler stopped before the run could start.")
        self.scheduler.shutdown(wait=False)
        executor._pool.shutdown(wait=False, cancel_futures=True)
        leadership.step_down()

        grace = conf.get("SHUTDOWN_GRACE")
        deadline = time.monotonic() + grace
        while runner.active_runs() and time.monotonic() < deadline and not self.grace_over:
            time.sleep(0.05)
        left = runner.active_runs()
        interrupted = 0
        if left:
            interrupted = runner.interrupt(
                list(left),
                f"Interrupted: the scheduler received {self.reason or 'a stop signal'} and the "
                f"run did not finish within the shutdown grace ({grace} s).",
            )
        # Results still waiting for the writer thread, before the lease row says stopped.
        results.stop()
        leadership.finish()
        self.write(
            f"Scheduler stopped ({self.reason or 'stop'}): "
            f"{interrupted} running job(s) marked interrupted."
        )
        if left:
            # Worker threads still inside a job cannot be stopped from Python;
            # their rows are final, so leave without waiting for them.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
