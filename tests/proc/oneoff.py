"""Jobs whose runs are scheduled from code (scheduler.requests), for tests/test_requests.py.

Each marks its start in the ``PROC_MARKS`` file with its arguments
("start <job id> <arguments> <due time>"): the proof of what really ran, and how often.
"""

import os
from datetime import datetime

from scheduler import cron, job
from tests.proc.marks import mark

ON_REQUEST = "0 0 1 1 *"


@job(id="oneoff.remind")
def remind(user_id: int, note: str = "", *, scheduled_at: datetime) -> None:
    """Send a reminder (a line in the marks file)."""
    mark(f"start oneoff.remind {user_id}:{note} {scheduled_at.isoformat()}")
    print(f"reminded user {user_id}: {note}")


@job(id="oneoff.count", misfire_grace_time=2)
def count(n: int) -> None:
    """One of many: marks its number. Two seconds' grace: later than that it is missed."""
    mark(f"start oneoff.count {n}")


@cron(ON_REQUEST, id="oneoff.report")
def report(scheduled_at: datetime, customer: str = "everyone") -> None:
    """A cron job run now and then for one customer."""
    mark(f"start oneoff.report {customer} {scheduled_at.isoformat()}")


@job(id="oneoff.flaky", retries=1, retry_backoff=0)
def flaky(n: int, word: str = "") -> None:
    """Fails on its first attempt, succeeds on its second: with the same arguments."""
    mark(f"start oneoff.flaky {n}:{word}")
    path = os.environ.get("PROC_MARKS", "")
    with open(path) as marks:
        if sum(line.startswith(f"start oneoff.flaky {n}:") for line in marks) < 2:
            raise ConnectionError("the partner API blinked")


@job(id="oneoff.isolated", isolation="process", timeout=30)
def isolated(n: int, *, scheduled_at: datetime) -> None:
    """Run in a child process: its arguments go with it."""
    mark(f"start oneoff.isolated {n} pid={os.getpid()} {scheduled_at.isoformat()}")
