from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import CommandError, CommandParser
from django_apscheduler.models import DjangoJob

from scheduler import conf, db
from scheduler.management.base import SchedulerCommand
from scheduler.registry import autodiscover


class Command(SchedulerCommand):
    help = (
        "Run the scheduler in the foreground: sync jobs from code into the job store, then run "
        "them on time until SIGTERM or Ctrl+C."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--list", action="store_true", help="Print every registered job and exit."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["list"]:
            self.list_jobs()
            return
        from scheduler.service import Service

        try:
            Service(write=self.say).run()
        except db.NotMigrated as exc:
            raise CommandError(str(exc)) from None

    def say(self, text: str) -> None:
        # Flushed at once: under systemd or docker stdout is a pipe, and the
        # process may leave through os._exit.
        self.stdout.write(text)
        self.stdout.flush()

    def list_jobs(self) -> None:
        specs = autodiscover()
        stored = dict(DjangoJob.objects.using(conf.database()).values_list("id", "next_run_time"))
        now = datetime.now(UTC)
        if not specs:
            self.stdout.write("No jobs are registered.")
            return
        for spec in sorted(specs.values(), key=lambda s: s.id):
            if not spec.enabled:
                next_run = "disabled"
            elif spec.on_demand:
                next_run = "when code schedules it"
            elif spec.id in stored:
                at = stored[spec.id]
                next_run = at.isoformat() if at else "paused"
            else:
                at = spec.make_trigger().get_next_fire_time(None, now)
                next_run = f"{at.isoformat() if at else 'never'} (not yet stored)"
            self.stdout.write(
                f"{spec.id}\t{spec.name}\t{spec.kind}: {spec.schedule_text} ({spec.timezone})\t"
                f"next: {next_run}"
            )
