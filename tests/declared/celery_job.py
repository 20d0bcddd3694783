"""A job sent to Celery (executor="celery"): scheduler.E023 when no Celery app can send it."""

from scheduler import cron


@cron("0 3 * * *", id="declared.on_celery", executor="celery", queue="reports")
def on_celery() -> None:
    pass
