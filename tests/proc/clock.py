"""A job due every second that marks the wall-clock time it really started."""

import time
from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark


@cron(second="*", id="clock.tick")
def tick(scheduled_at: datetime) -> None:
    """Every second: mark the fire time and the real start."""
    mark(f"clock.tick {scheduled_at.isoformat()} {time.time():.3f}")
