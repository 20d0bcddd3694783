"""Example jobs of this project: one for each feature.

(The history pruner ships with the app: ``scheduler.prune_history``.)

With a Celery broker (CELERY_BROKER_URL, set by ``scripts/demo.sh --fleet``) two
more jobs run on the worker fleet; without one they are not declared.
"""

import logging
import os
import random
import socket
import time
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from scheduler import cron, interval

logger = logging.getLogger(__name__)


@interval(seconds=5)
def heartbeat() -> None:
    """Say hello every 5 seconds."""
    print(f"Hello from the scheduler at {timezone.now():%H:%M:%S}")


@cron(second="*/10")
def sample_sensor(scheduled_at: datetime) -> None:
    """Read a (pretend) sensor every 10 seconds, knowing which slot it serves."""
    late = (timezone.now() - scheduled_at).total_seconds()
    logger.info("Slot %s served %.3f s late", scheduled_at.isoformat(), late)


@interval(seconds=15)
def flaky_sync() -> None:
    """Sync with a partner system that fails one time in three."""
    time.sleep(random.uniform(0.05, 0.3))
    if random.random() < 1 / 3:
        raise ConnectionError("partner API answered 503 Service Unavailable")
    print("synced 42 records")


@interval(seconds=20)
async def refresh_cache() -> None:
    """Refresh a cache with async I/O."""
    import asyncio

    await asyncio.sleep(0.2)
    print("cache refreshed")


@interval(minutes=1)
def rebuild_search_index() -> None:
    """Rebuild a (pretend) search index; takes about 5 seconds."""
    for step in range(5):
        time.sleep(1)
        print(f"indexed batch {step + 1}/5")


@cron("30 8 * * mon-fri", enabled=False)
def weekday_report() -> None:
    """Send the weekday report (disabled in the demo)."""
    print("report sent")


if settings.CELERY_BROKER_URL:
    # Fleet mode: the scheduler sends each run to a Celery worker (executor="celery"),
    # which runs it and records it in the same row; the admin says which worker it ran on.

    @interval(seconds=5, executor="celery")
    def fleet_report() -> None:
        """Build a (pretend) report on a Celery worker every 5 seconds."""
        time.sleep(random.uniform(0.5, 1.5))
        print(f"report built by worker process {os.getpid()} on {socket.gethostname()}")

    @cron(second="*/20", executor="celery", timeout=2, retries=1)
    def fleet_thumbnails() -> None:
        """Resize (pretend) images on a Celery worker; a slow batch passes the 2 s timeout."""
        for batch in range(random.randint(1, 3)):
            time.sleep(0.8)  # Celery's soft time limit stops it here, recorded timed_out
            print(f"resized batch {batch + 1}")
