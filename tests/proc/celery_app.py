"""The Celery app of the fleet tests: the broker from ``PROC_BROKER``, the scheduler's task
(scheduler.worker) included, Django set up from ``DJANGO_SETTINGS_MODULE``
(tests/proc/settings.py), as a project's celery.py does."""

import os

import django
from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.proc.settings")
django.setup()

app = Celery("tests", broker=os.environ.get("PROC_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    include=["scheduler.worker"],
    # One message at a time per pool process: a run waits in the broker, not behind a
    # long run in a process that prefetched it.
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
)
