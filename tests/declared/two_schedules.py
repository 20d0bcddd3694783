"""A mistake: two schedules on one function, neither with an id of its own."""

from scheduler import cron, interval


@cron("0 3 * * *")
@interval(minutes=5)
def report() -> None:
    """Send the report."""
