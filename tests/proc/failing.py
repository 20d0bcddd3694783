"""A job that fails every second."""

from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark


@cron(second="*", id="proc.fail")
def fail(scheduled_at: datetime) -> None:
    """Every second: fails."""
    print("failing now")
    mark(f"fail {scheduled_at.isoformat()}")
    raise RuntimeError(f"failed on purpose at {scheduled_at.isoformat()}")
