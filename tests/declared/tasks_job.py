"""A job enqueued on Django's task framework (executor="tasks"): scheduler.E023 when the
TASKS setting lacks its backend."""

from scheduler import cron


@cron("0 3 * * *", id="declared.on_tasks", executor="tasks")
def on_tasks() -> None:
    pass
