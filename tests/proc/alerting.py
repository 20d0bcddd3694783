"""Jobs for the detector's end-to-end tests (tests/test_incidents.py): one that fails its
first three runs and then succeeds (counting its starts in the ``PROC_MARKS`` file, so
that the count survives a restart), one that ticks."""

import os

from scheduler import cron
from tests.proc.marks import mark


def starts(job_id: str) -> int:
    try:
        with open(os.environ.get("PROC_MARKS", "")) as marks:
            return sum(line.startswith(f"start {job_id}") for line in marks)
    except FileNotFoundError:
        return 0


@cron(second="*", id="alerting.flaky", alert_after=3)
def flaky() -> None:
    """Fails three times, then succeeds."""
    mark("start alerting.flaky")
    if starts("alerting.flaky") <= 3:
        raise ConnectionError("the partner API is down")


@cron(second="*", id="alerting.tick")
def tick() -> None:
    mark("start alerting.tick")


@cron(second="*", id="alerting.brief", misfire_grace_time=1)
def brief() -> None:
    """Every second, one second of grace: a scheduler frozen longer misses fire times."""
    mark("start alerting.brief")
