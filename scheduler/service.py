"""The scheduler process started by ``manage.py runapscheduler``."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from django.conf import settings
from django.utils import timezone

from scheduler import capture, conf, db, runner
from scheduler.control import Control
from scheduler.jobstore import JobStore
from scheduler.models import JobRun
from scheduler.registry import autodiscover
from scheduler.sync import sync

logger = logging.getLogger(__name__)


def make_scheduler() -> BackgroundScheduler:
    return BackgroundScheduler(
        jobstores={"default": JobStore()},
        executors={"default": runner.Executor(conf.get("THREADS"))},
        timezone=settings.TIME_ZONE,
        jobstore_retry_interval=2,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_orphans() -> int:
    """Mark ``running`` rows left by a dead scheduler on this host as interrupted."""
    runs = JobRun.objects.using(db.alias()).filter(
        status=JobRun.Status.RUNNING, hostname=runner.HOSTNAME
    )
    pids = set(runs.exclude(pid=os.getpid()).values_list("pid", flat=True))
    dead = [pid for pid in pids if pid is None or not _pid_alive(pid)]
    if not dead:
        return 0
    return runs.filter(pid__in=dead).update(
        status=JobRun.Status.INTERRUPTED,
        finished_at=timezone.now(),
        exception="Interrupted: the scheduler process running it died (found at the next start).",
    )


class Service:
    def __init__(self, write: Callable[[str], None] = print) -> None:
        self.write = write
        self.stop_event = threading.Event()
        self.reason = ""

    def request_stop(self, signum: int, frame: object = None) -> None:
        name = signal.Signals(signum).name
        if self.stop_event.is_set():
            logger.warning("Received %s again: not waiting for running jobs any more.", name)
            self.grace_over = True
            return
        logger.info("Received %s: finishing running jobs, starting no new ones.", name)
        self.reason = name
        self.stop_event.set()

    def run(self) -> None:
        specs = autodiscover()
        capture.install()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.request_stop)

        recovered = db.retrying(recover_orphans, "recover orphaned runs")
        if recovered:
            logger.warning("Marked %d run(s) of a dead scheduler as interrupted.", recovered)

        scheduler = make_scheduler()
        store = scheduler._jobstores["default"]
        report = sync(scheduler, store, specs)
        scheduler.start()
        executor = scheduler._lookup_executor("default")
        control = Control(scheduler, executor._pool, self.stop_event)
        control.start()
        self.write(
            f"Scheduler started (pid {os.getpid()}, database {db.alias()!r}): "
            f"{len(specs)} job(s): {report}. Stop with Ctrl+C or SIGTERM."
        )

        self.stop_event.wait()
        self.shutdown(scheduler, executor, control)

    grace_over = False

    def shutdown(
        self, scheduler: BackgroundScheduler, executor: runner.Executor, control: Control
    ) -> None:
        control.join(timeout=5)
        # Stop the main loop and cancel submissions no worker has picked up yet.
        executor._pool.shutdown(wait=False, cancel_futures=True)
        scheduler.shutdown(wait=False)

        grace = conf.get("SHUTDOWN_GRACE")
        deadline = time.monotonic() + grace
        while runner.active_runs() and time.monotonic() < deadline and not self.grace_over:
            time.sleep(0.05)
        left = runner.active_runs()
        interrupted = (
            runner.interrupt(
                list(left),
                f"Interrupted: the scheduler received {self.reason or 'a stop signal'} and the run "
                f"did not finish within the shutdown grace ({grace} s).",
            )
            if left
            else 0
        )
        self.write(
            f"Scheduler stopped ({self.reason or 'stop'}): "
            f"{interrupted} running job(s) marked interrupted."
        )
        if left:
            # Worker threads still inside a job cannot be stopped from Python;
            # their rows are final, so leave without waiting for them.
            logging.shutdown()
            os._exit(0)
