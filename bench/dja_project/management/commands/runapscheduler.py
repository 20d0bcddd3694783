"""django-apscheduler's README command, with the bench's jobs instead of ``my_job``.

The only additions are for measuring: a listener that prints "BENCH READY" once
the scheduler has started (every ``add_job`` done), and SIGTERM stopping it like
Ctrl+C.
"""

import logging
import signal

from apscheduler.events import EVENT_SCHEDULER_STARTED
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from django.conf import settings
from django.core.management.base import BaseCommand
from django_apscheduler import util
from django_apscheduler.jobstores import DjangoJobStore
from django_apscheduler.models import DjangoJobExecution

from bench import workload

logger = logging.getLogger(__name__)

READY = "BENCH READY"


# The `close_old_connections` decorator ensures that database connections, that have become
# unusable or are obsolete, are closed before and after your job has run.
@util.close_old_connections
def delete_old_job_executions(max_age=604_800):
    """Deletes APScheduler job execution entries older than `max_age` from the database."""
    DjangoJobExecution.objects.delete_old_job_executions(max_age)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = "Runs APScheduler."

    def handle(self, *args, **options):
        scheduler = BlockingScheduler(timezone=settings.TIME_ZONE)
        scheduler.add_jobstore(DjangoJobStore(), "default")

        for job in workload.aps_jobs():
            scheduler.add_job(**job)
        logger.info("Added the bench jobs.")

        scheduler.add_job(
            delete_old_job_executions,
            trigger=CronTrigger(
                day_of_week="mon", hour="00", minute="00"
            ),  # Midnight on Monday, before start of the next work week.
            id="delete_old_job_executions",
            max_instances=1,
            replace_existing=True,
        )
        logger.info("Added weekly job: 'delete_old_job_executions'.")

        scheduler.add_listener(
            lambda event: self.stdout.write(READY) or self.stdout.flush(),
            EVENT_SCHEDULER_STARTED,
        )
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            logger.info("Starting scheduler...")
            scheduler.start()
        except KeyboardInterrupt:
            logger.info("Stopping scheduler...")
            scheduler.shutdown()
            logger.info("Scheduler shut down successfully!")
