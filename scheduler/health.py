"""Whether an active scheduler is alive, read from the database.

For ``manage.py schedulerstatus`` (an operator's tool: it shows the database's
own error) and the admin's banner and dashboard (staff see a plain message;
the error, which can name host, port and user, goes to the server log). The
web side reads health from here and never loads the runtime.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError
from django.utils import timezone
from django.utils.translation import gettext as _

from scheduler import conf
from scheduler.models import Lease, SchedulerInstance

logger = logging.getLogger(__name__)

# The name of the one lease row (``scheduler.lease`` holds and renews it).
LEASE_NAME = "scheduler"


def health() -> dict[str, Any]:
    """Is an active scheduler alive? For ``schedulerstatus`` and the admin."""
    lease_seconds = float(conf.get("LEASE_SECONDS"))
    now = timezone.now()
    instances = SchedulerInstance.objects
    fresh = now - timedelta(seconds=lease_seconds)
    lease = Lease.objects.filter(name=LEASE_NAME).first()
    active = None
    if lease is not None and lease.expires_at > now:
        active = instances.filter(id=lease.holder, heartbeat_at__gte=fresh).first()
    standbys = instances.filter(
        role=SchedulerInstance.Role.STANDBY, heartbeat_at__gte=fresh, stopped_at__isnull=True
    ).count()
    last = instances.exclude(role=SchedulerInstance.Role.RUNJOB).order_by("-heartbeat_at").first()
    return {
        "ok": active is not None,
        "active": _describe(active, now),
        "standbys": standbys,
        "last_seen": _describe(last, now),
        "lease_seconds": lease_seconds,
    }


def health_or_error() -> dict[str, Any]:
    """:func:`health`, or why it cannot be known (the database is away)."""
    try:
        return health()
    except DatabaseError as exc:
        return {"ok": False, "error": str(exc)}


def _describe(instance: SchedulerInstance | None, now: datetime) -> dict[str, Any] | None:
    if instance is None:
        return None
    return {
        "id": instance.id,
        "hostname": instance.hostname,
        "pid": instance.pid,
        "role": instance.role,
        "version": instance.version,
        "started_at": instance.started_at.isoformat(),
        "heartbeat_at": instance.heartbeat_at.isoformat(),
        "heartbeat_age": round((now - instance.heartbeat_at).total_seconds(), 1),
    }


def for_staff() -> dict[str, Any]:
    """:func:`health` for the admin: when the database fails, a plain message (the
    database's own error text goes to the server log)."""
    try:
        return health()
    except DatabaseError:
        logger.error("Cannot read whether a scheduler is alive from its database", exc_info=True)
        return {
            "ok": False,
            "error": _("The scheduler's database cannot be read; details are in the server log."),
        }
