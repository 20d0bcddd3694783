from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django.utils import timezone

from scheduler import conf
from scheduler.management.base import SchedulerCommand
from scheduler.models import JobRun


class Command(SchedulerCommand):
    help = (
        "Delete finished runs older than SCHEDULER['HISTORY_DAYS'] days (or --days), as the "
        "scheduler.prune_history job does every night. Runs still queued or running are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=int, help="Keep this many days instead of SCHEDULER['HISTORY_DAYS']."
        )

    def handle(self, *args: Any, days: int | None, **options: Any) -> None:
        if days is None:
            days = conf.get("HISTORY_DAYS")
            if days is None:
                self.stdout.write("SCHEDULER['HISTORY_DAYS'] is None: keeping all history.")
                return
        if days < 1:
            raise CommandError(f"--days must be at least 1, not {days}.")
        deleted = JobRun.objects.prune(timezone.now() - timedelta(days=days))
        self.stdout.write(f"Deleted {deleted} finished run(s) older than {days} days.")
