"""The base of the app's management commands."""

from __future__ import annotations

from typing import Any

from django.core import checks
from django.core.management.base import BaseCommand, CommandError

from scheduler import conf, db


class SchedulerCommand(BaseCommand):
    """A command that meets the database itself, with its own handling of an outage.

    Django 6 runs the model checks against every database before ``handle()`` (Django 5.2
    did not): on SQLite the JSONField check opens a connection, so a missing file became a
    traceback instead of the scheduler's "Database unavailable" retry, and a locked file held
    the start for ``timeout`` seconds before the signal handlers were in place. The checks
    run here as they did on 5.2, static ones only; ``manage.py check --database default``
    still runs the database ones.

    A database that cannot be reached is reported in one line naming it, not a traceback
    (``--traceback`` shows it); ``runapscheduler`` waits for it before this is reached.
    """

    def execute(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute(*args, **options)
        except db.TRANSIENT as exc:
            raise CommandError(f"Database {conf.database()!r} unavailable: {exc}") from exc

    def check(
        self,
        app_configs: Any = None,
        tags: Any = None,
        display_num_errors: bool = False,
        include_deployment_checks: bool = False,
        fail_level: int = checks.ERROR,
        databases: Any = None,
    ) -> None:
        super().check(
            app_configs=app_configs,
            tags=tags,
            display_num_errors=display_num_errors,
            include_deployment_checks=include_deployment_checks,
            fail_level=fail_level,
            databases=databases or [],
        )
