"""Settings of the one-off runs scenario: the bench's settings for this project
(bench/ours_settings.py, i.e. the example project's) plus Django's task framework with
two backends on the same database: ``default``, django-tasks-db's ``DatabaseBackend``
(run by its ``db_worker``), and ``scheduler``, this project's ``SchedulerBackend`` (run
by ``runapscheduler``), as their READMEs set them up.
"""

import importlib.util

from bench.ours_settings import *  # noqa: F403

# On Django 5.2 through the django-tasks backport (an app of its own there).
_backport = ["django_tasks"] if importlib.util.find_spec("django.tasks") is None else []
INSTALLED_APPS = [*INSTALLED_APPS, *_backport, "django_tasks_db"]  # noqa: F405
TASKS = {
    "default": {"BACKEND": "django_tasks_db.DatabaseBackend"},
    "scheduler": {"BACKEND": "scheduler.tasks.SchedulerBackend"},
}
SCHEDULER = {"JOB_MODULES": ["bench.jobs_oneoff"]}
