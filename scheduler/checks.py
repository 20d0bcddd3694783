"""System checks: ``manage.py check`` (and every command that runs the checks first,
``runapscheduler`` among them) reports a broken ``SCHEDULER`` setting and job
declarations that cannot work, each as an ``Error`` with a stable id.

The ids, listed in the README's Settings section:

* ``scheduler.E001``: the ``SCHEDULER`` setting is not a dict;
* ``scheduler.E002``: unknown keys in it;
* ``scheduler.E003`` .. ``scheduler.E014``: one id per key (see ``conf.CHECK_IDS``);
* ``scheduler.E020``: a ``@cron``/``@interval`` declaration that cannot work;
* ``scheduler.E021``: a module listed in ``JOB_MODULES`` cannot be imported;
* ``scheduler.E022``: a job with ``overlap="replace"`` that does not run in a child
  process (a thread cannot be stopped, so it could not be replaced);
* ``scheduler.E025``: ``ALERTS`` (also: Sentry Crons asked for without sentry_sdk);
* ``scheduler.E023``: jobs sent to a fleet with nothing to send them with: no Celery
  app (Celery not installed, or ``CELERY_APP`` cannot be imported) for
  ``executor="celery"``, no task framework or no ``TASK_BACKEND`` in ``TASKS`` for
  ``executor="tasks"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from scheduler import conf, registry

DECLARATION = "scheduler.E020"
JOB_MODULE = "scheduler.E021"
REPLACE_IN_THREAD = "scheduler.E022"
NO_CELERY = "scheduler.E023"


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """One Error per problem of the ``SCHEDULER`` setting."""
    return [
        checks.Error(problem.message, hint=problem.hint, id=f"scheduler.{problem.id}")
        for problem in conf.problems()
    ]


def check_alerts(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """What keeps the alerts the settings ask for from working (Sentry Crons without
    sentry_sdk), once the setting itself is valid."""
    if conf.problems():
        return []
    from scheduler.checkins import check_sentry

    problem = check_sentry()
    return [checks.Error(problem, id=f"scheduler.{conf.CHECK_IDS['ALERTS']}")] if problem else []


def check_jobs(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """Import the job modules as ``runapscheduler`` does; a declaration that raises is an Error."""
    if conf.problems():
        # Discovery reads the setting; check_settings reports what is wrong with it, and
        # the declarations are checked once it is fixed.
        return []
    try:
        registry.autodiscover()
    except registry.DeclarationError as exc:
        # The message names the job; importing stops at the first bad declaration.
        return [checks.Error(str(exc), id=DECLARATION)]
    except ImproperlyConfigured as exc:
        return [
            checks.Error(
                str(exc),
                hint="List only modules that exist, as dotted paths (myapp.jobs).",
                id=JOB_MODULE,
            )
        ]
    return _replace_problems() + _celery_problems() + _tasks_problems()


def _sent_jobs(executor: str) -> str:
    """The jobs sent to ``executor``, for a message ("'a', 'b', 'c', ..."); "" if none."""
    sent = sorted(s.id for s in registry.registry.values() if s.effective_executor == executor)
    return ", ".join(repr(job_id) for job_id in sent[:3]) + (", ..." if len(sent) > 3 else "")


def _tasks_problems() -> list[checks.CheckMessage]:
    jobs = _sent_jobs("tasks")
    if not jobs:
        return []
    alias = conf.get("TASK_BACKEND")
    try:
        import_module("django.tasks")
    except ImportError:
        try:
            import_module("django_tasks")
        except ImportError:
            return [
                checks.Error(
                    f"Jobs {jobs} run through Django's task framework (executor='tasks'), "
                    "which this Django does not have.",
                    hint="Use Django 6, or pip install django-tasks (the backport) on 5.2.",
                    id=NO_CELERY,
                )
            ]
    from django.conf import settings

    if alias not in (getattr(settings, "TASKS", None) or {}):
        return [
            checks.Error(
                f"Jobs {jobs} are enqueued on the task backend {alias!r} "
                "(SCHEDULER['TASK_BACKEND']), which the TASKS setting does not define.",
                hint="Add it to TASKS, such as {'default': {'BACKEND': "
                "'django_tasks_db.DatabaseBackend'}}.",
                id=NO_CELERY,
            )
        ]
    return []


def _celery_problems() -> list[checks.CheckMessage]:
    jobs = _sent_jobs("celery")
    if not jobs:
        return []
    try:
        conf.celery_app()
    except ImportError as exc:
        return [
            checks.Error(
                f"Jobs {jobs} run on Celery (executor='celery'), but there is no Celery app to "
                f"send them with: {exc}.",
                hint="pip install 'django-scheduler-app[celery]', and set "
                "SCHEDULER['CELERY_APP'] to your app ('myproject.celery:app') unless your "
                "project imports it in its __init__.py.",
                id=NO_CELERY,
            )
        ]
    except AttributeError as exc:
        return [
            checks.Error(
                f"SCHEDULER['CELERY_APP'] names no Celery app: {exc}.",
                hint="Give it as 'module:attribute', such as 'myproject.celery:app'.",
                id=NO_CELERY,
            )
        ]
    return []


def _replace_problems() -> list[checks.CheckMessage]:
    return [
        checks.Error(
            f"Scheduled job {spec.id!r}: overlap='replace' stops the run going on, which "
            "only a run in a child process can be; "
            + (
                "it runs in a thread."
                if spec.effective_executor == "local"
                else "it runs on a Celery worker."
            ),
            hint="Declare it with isolation='process', or choose overlap='queue' or 'skip'.",
            id=REPLACE_IN_THREAD,
        )
        for spec in registry.registry.values()
        if spec.effective_overlap == "replace"
        and (spec.effective_isolation != "process" or spec.effective_executor != "local")
    ]
