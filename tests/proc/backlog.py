"""A job due every second with coalesce=False: after downtime, a worker gets the backlog."""

import time
from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark


@cron(second="*", id="backlog.every", coalesce=False)
def every(scheduled_at: datetime) -> None:
    """Every second, half a second each, every missed fire time caught up."""
    mark(f"backlog.every {scheduled_at.isoformat()}")
    time.sleep(0.5)
