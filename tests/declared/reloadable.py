"""One function with two schedules, each with its own id; imported again by the tests."""

from scheduler import cron, interval


@cron("0 3 * * *")
@interval(minutes=5, id="tests.declared.reloadable.every_five")
def report() -> None:
    """Send the report."""
