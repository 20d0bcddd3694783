"""Job B of the job-removal test: dropped from JOB_MODULES at the second start."""

from scheduler import cron


@cron(second="*", id="proc.b")
def job_b() -> None:
    """Job B, every second."""
    print("B")
