"""Jobs with ``ping_url=``, for tests/test_checkins.py: the pings of their runs go to the
test's HTTP server (``PROC_PING_URL``; ``PROC_SLOW_PING_URL`` for a second one).
runapscheduler sends them (its ``CheckIns``, started by the service)."""

import os

from scheduler import cron

PING = os.environ.get("PROC_PING_URL", "http://127.0.0.1:9/ping")
SLOW_PING = os.environ.get("PROC_SLOW_PING_URL", PING)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this exception raises too")


@cron(second="*", id="pinged.ok", ping_url=f"{PING}/ok")
def ok() -> None:
    print("all good")


@cron(second="*", id="pinged.fails", ping_url=f"{PING}/fails")
def fails() -> None:
    print("about to fail")
    raise Unprintable()


@cron(second="*", id="pinged.slow", ping_url=f"{SLOW_PING}/slow")
def slow_endpoint() -> None:
    """Its pings go to a server that never answers (a check-in waits 5 s for one)."""
