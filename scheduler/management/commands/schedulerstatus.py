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
        parser.add_argument(
            "--no-alert",
            action="store_true",
            help="Do not raise the 'no active scheduler' incident (and its alerts) when "
            "there is none.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        status = current_status()
        if not status["ok"] and not options["no_alert"]:
            status["alert"] = raise_no_scheduler(status)
        if options["json"]:
            self.stdout.write(json.dumps(status, sort_keys=True))
        else:
            self.stdout.write(summary(status))
        sys.exit(0 if status["ok"] else 1)


def raise_no_scheduler(status: dict[str, Any]) -> str:
    """Open the "no active scheduler" incident (once: an open one is only counted again)
    and send its alerts from here: no scheduler runs to send them. What was done, in
    words ("" when nothing was: the database is away, or no scheduler ever ran)."""
    last = status.get("last_seen")
    if "error" in status or not last:
        return ""
    from scheduler import alerts, incidents, outbox

    try:
        box = outbox.Outbox(outbox.configured_notifiers())
        opened = incidents.Incidents(box.names).open(
            alerts.NO_SCHEDULER,
            "",
            "No active scheduler: the last one stopped heartbeating",
            f"schedulerstatus found no active scheduler: the last heartbeat came "
            f"{last['heartbeat_age']} s ago from {last['hostname']}:{last['pid']} "
            f"({last['role']}).",
        )
        sent = box.deliver_due()
    except DatabaseError as exc:
        return f"could not record the incident: {exc}"
    if opened is None:
        return f"incident open already; {sent} alert(s) sent"
    return f"incident #{opened.pk} opened; {sent} alert(s) sent"


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
        alert = f" [{status['alert']}]" if status.get("alert") else ""
        return (
            f"FAIL: no active scheduler; last heartbeat {last['heartbeat_age']} s ago from "
            f"{last['hostname']}:{last['pid']} ({last['role']}){alert}"
        )
    return "FAIL: no scheduler has ever started on this database"
