"""A slow job, due every second, that runs for ``PROC_SLOW_SECONDS`` seconds (default 3)."""

import os
import time
from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark


@cron(second="*", id="proc.slow")
def slow(scheduled_at: datetime) -> None:
    """Every second, but each run takes a while."""
    mark(f"slow-start {scheduled_at.isoformat()}")
    print("slow job started")
    time.sleep(float(os.environ.get("PROC_SLOW_SECONDS", "3")))
    print("slow job finished")
    mark(f"slow-end {scheduled_at.isoformat()}")
