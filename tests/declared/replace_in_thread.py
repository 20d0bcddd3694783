"""A job with overlap="replace" and no isolation: scheduler.E022 (a thread cannot be stopped)."""

from scheduler import cron


@cron("0 3 * * *", id="declared.replace", overlap="replace")
def replace_me() -> None:
    pass
