"""Fast jobs for the integration tests: one every second, and jobs run only on request."""

import logging
from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark

logger = logging.getLogger(__name__)

# A fire time that is never reached while a test runs: these jobs run on request only.
ON_REQUEST = "0 0 1 1 *"


@cron(second="*", id="proc.tick")
def tick(scheduled_at: datetime) -> None:
    """Every second: say which fire time it serves."""
    print(f"tick for {scheduled_at.isoformat()}")
    logger.info("tick logged")
    mark(f"tick {scheduled_at.isoformat()}")


@cron(ON_REQUEST, id="proc.echo")
def echo(scheduled_at: datetime) -> None:
    """Run on request: print and mark."""
    print(f"echo for {scheduled_at.isoformat()}")
    mark(f"echo {scheduled_at.isoformat()}")


@cron(ON_REQUEST, id="proc.explode")
def explode() -> None:
    """Run on request: always fails."""
    print("about to explode")
    raise ValueError("exploded on purpose")
