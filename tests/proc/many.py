"""Many jobs due every second, so that the main loop is busy handing out fire times."""

from scheduler import cron


def work() -> None:
    """One of many."""


for _number in range(200):
    cron(second="*", id=f"proc.many.{_number:03d}")(work)
