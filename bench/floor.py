"""The floor: plain APScheduler, no database (MemoryJobStore + ThreadPoolExecutor).

``python -m bench.floor`` adds the jobs of bench/workload.py to a
BlockingScheduler and runs it until SIGTERM; it prints "BENCH READY" once the
scheduler has started with every job added.
"""

from __future__ import annotations

import signal
import sys
from datetime import UTC

from apscheduler.events import EVENT_SCHEDULER_STARTED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.blocking import BlockingScheduler

from bench import workload

READY = "BENCH READY"


def make_scheduler() -> BlockingScheduler:
    return BlockingScheduler(
        jobstores={"default": MemoryJobStore()},
        executors={"default": ThreadPoolExecutor(10)},
        timezone=UTC,
    )


def main() -> None:
    scheduler = make_scheduler()
    for job in workload.aps_jobs():
        scheduler.add_job(**job)
    scheduler.add_listener(lambda event: print(READY, flush=True), EVENT_SCHEDULER_STARTED)

    def stop(signum, frame) -> None:
        scheduler.shutdown(wait=False)

    signal.signal(signal.SIGTERM, stop)
    scheduler.start()
    sys.exit(0)


if __name__ == "__main__":
    main()
