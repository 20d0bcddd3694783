from __future__ import annotations

import json
import sys
from typing import Any

from django.core.management.base import CommandParser
from django.db import DatabaseError

from scheduler import db, health
from scheduler.management.base import SchedulerCommand


class Command(SchedulerCommand):
    help = (
        "Exit 0 when an active scheduler has a fresh heartbeat, 1 otherwise, with a one-line "
        "summary. Fit for a liveness or readiness probe."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="Print the status as JSON.")

    def handle(self, *args: Any, **options: Any) -> None:
        status = current_status()
        if options["json"]:
            self.stdout.write(json.dumps(status, sort_keys=True))
        else:
            self.stdout.write(summary(status))
        sys.exit(0 if status["ok"] else 1)


def current_status() -> dict[str, Any]:
    try:
        db.check_migrated()
    except db.NotMigrated as exc:
        return {"ok": False, "error": str(exc), "not_migrated": True}
    except DatabaseError:
        pass  # health says the database is unavailable
    return health.health_or_error()


def summary(status: dict[str, Any]) -> str:
    if "error" in status:
        if status.get("not_migrated"):
            return f"FAIL: {status['error']}"
        return f"FAIL: database unavailable: {status['error']}"
    active, last = status["active"], status["last_seen"]
    if active:
        return (
            f"OK: active scheduler {active['hostname']}:{active['pid']} "
            f"(instance {active['id'][:8]}, version {active['version']}), heartbeat "
            f"{active['heartbeat_age']} s ago; {status['standbys']} standby"
        )
    if last:
        return (
            f"FAIL: no active scheduler; last heartbeat {last['heartbeat_age']} s ago from "
            f"{last['hostname']}:{last['pid']} ({last['role']})"
        )
    return "FAIL: no scheduler has ever started on this database"
