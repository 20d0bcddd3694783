"""A job the scheduler sends to Celery that the workers' code does not have (the workers of
that test import only tests.proc.fleet_jobs)."""

from scheduler import cron


@cron("0 0 1 1 *", id="fleet.only_here", executor="celery")
def only_here() -> None:
    print("never runs: no worker has this job")
