"""Settings of the ``runapscheduler``/``runjob`` processes started by the integration tests.

The example project's settings (``DATABASE_URL`` picks the database), with
``SCHEDULER`` keys overridden from environment variables:

SCHEDULER_JOB_MODULES   comma-separated dotted modules (default ``tests.proc.jobs``)
SCHEDULER_<KEY>         any other key of scheduler/conf.py, as JSON
                        (SCHEDULER_SHUTDOWN_GRACE=1, SCHEDULER_POLL_INTERVAL=0.2, ...)
"""

import importlib.util
import json
import os

# The example settings need a key with DEBUG off (see tests/settings.py).
os.environ.setdefault("SECRET_KEY", "tests-only-" + "x" * 50)

from scheduler.conf import DEFAULTS  # noqa: E402
from settings import *  # noqa: E402, F403

# runserver in the browser tests speaks plain HTTP on 127.0.0.1.
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0

SCHEDULER = {
    "JOB_MODULES": [
        module.strip()
        for module in os.environ.get("SCHEDULER_JOB_MODULES", "tests.proc.jobs").split(",")
        if module.strip()
    ],
}
for _key in DEFAULTS:
    _value = os.environ.get(f"SCHEDULER_{_key}")
    if _value and _key != "JOB_MODULES":
        SCHEDULER[_key] = json.loads(_value)

# Django's task framework (executor="tasks"): django-tasks-db's database backend, run by
# its ``db_worker``; on Django 5.2 through the django-tasks backport.
if importlib.util.find_spec("django_tasks_db") is not None:
    _backport = ["django_tasks"] if importlib.util.find_spec("django.tasks") is None else []
    INSTALLED_APPS = [*INSTALLED_APPS, *_backport, "django_tasks_db"]  # noqa: F405
    TASKS = {
        "default": {"BACKEND": "django_tasks_db.DatabaseBackend"},
        # This scheduler as a task backend (tests/test_tasks.py): its tasks run in
        # runapscheduler. QUEUES: any queue name the tests give.
        "scheduler": {"BACKEND": "scheduler.tasks.SchedulerBackend", "QUEUES": []},
    }

# A second database for the scheduler's tables (SCHEDULER_DATABASE='"scheduler"'):
# tests/test_metrics.py points it where no database listens, to see the web side
# answer while the scheduler's database is away and the default one is not.
if os.environ.get("PROC_SCHEDULER_DATABASE_URL"):
    import dj_database_url

    DATABASES["scheduler"] = dj_database_url.parse(os.environ["PROC_SCHEDULER_DATABASE_URL"])  # noqa: F405
