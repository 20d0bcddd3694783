"""Job A of the job-removal test."""

from scheduler import cron


@cron(second="*", id="proc.a")
def job_a() -> None:
    """Job A, every second."""
    print("A")
