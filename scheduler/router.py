"""A database router for projects that keep jobs and history apart (``SCHEDULER['DATABASE']``).

Add ``"scheduler.router.SchedulerRouter"`` to ``DATABASE_ROUTERS`` and run
``manage.py migrate --database <alias>``: the scheduler's tables and
django-apscheduler's then live only in that database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scheduler import conf

if TYPE_CHECKING:
    from django.db.models import Model

APPS = {"scheduler", "django_apscheduler"}


class SchedulerRouter:
    def db_for_read(self, model: type[Model], **hints: Any) -> str | None:
        return conf.database() if model._meta.app_label in APPS else None

    db_for_write = db_for_read

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        labels = {obj1._meta.app_label, obj2._meta.app_label}
        if labels <= APPS:
            return True
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        if app_label in APPS:
            return db == conf.database()
        return None
