"""A job on the workers that runs longer than its interval (executor="celery"): with
max_instances=1 its runs must never overlap, whichever worker takes them."""

import os
import time
from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark


@cron(second="*", id="fleet.slow", executor="celery")
def slow(scheduled_at: datetime) -> None:
    mark(f"start fleet.slow {scheduled_at.isoformat()} {time.time():.6f} pid={os.getpid()}")
    time.sleep(2.5)
    mark(f"end fleet.slow {scheduled_at.isoformat()} {time.time():.6f} pid={os.getpid()}")
