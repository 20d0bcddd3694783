"""Jobs of the chaos soak (scripts/chaos.py): every kind of behaviour a job may have.

Each call appends two lines to the file named by ``PROC_MARKS`` (one
``O_APPEND`` write per line, so lines of concurrent processes never
interleave), the proof of what really ran, whatever the database says::

    start <job id> <fire time> <pid> <unix time> <intent: ok | fail>
    end   <job id> <fire time> <pid> <unix time> <outcome: ok | fail <exception type>>

The fire time is the ``scheduled_at`` the scheduler passes: the fire time a
scheduled run serves, or the request time of a manual run. ``intent`` is what
the job means to do; ``outcome`` is what its body did (a job meant to succeed
that fails was broken by what the scheduler gives it, e.g. its stdout).

Every schedule is a cron ``second`` field in UTC, so that the soak enumerates
the fire times with the job's own trigger. ``SLOWEST`` is the longest body.
Jobs listed in ``PROC_CHAOS_WITHOUT`` (comma-separated ids) are not registered:
``chaos.py --without`` leaves out the jobs of a known fault to see what else fails.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from scheduler import Backoff, cron
from tests.proc.marks import mark

F = TypeVar("F", bound=Callable[..., Any])

WITHOUT = {job_id for job_id in os.environ.get("PROC_CHAOS_WITHOUT", "").split(",") if job_id}
SLOW_SECONDS = 4.5  # longer than chaos.slow's interval: its next fire times are skipped
SLOWEST = SLOW_SECONDS


def _job(job_id: str, **schedule: Any) -> Callable[[F], F]:
    """``@cron(..., id=job_id, timezone="UTC")``, unless the job is left out."""

    def decorator(func: F) -> F:
        if job_id in WITHOUT:
            return func
        return cron(id=job_id, timezone="UTC", **schedule)(func)

    return decorator


def _line(event: str, job_id: str, scheduled_at: datetime, what: str) -> None:
    mark(f"{event} {job_id} {scheduled_at.isoformat()} {os.getpid()} {time.time():.6f} {what}")


def _traced(job_id: str, scheduled_at: datetime, intent: str, body: Callable[[], None]) -> None:
    """Run ``body`` between a start line and an end line that says how it ended."""
    _line("start", job_id, scheduled_at, intent)
    try:
        body()
    except BaseException as exc:
        # type(), not str(): some exceptions cannot be turned into text (chaos.bad_str).
        _line("end", job_id, scheduled_at, f"fail {type(exc).__name__}")
        raise
    _line("end", job_id, scheduled_at, "ok")


class PlannedFailure(Exception):
    pass


class UnprintableError(Exception):
    """An exception whose ``str()`` raises, as some library exceptions' do."""

    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be turned into text")


def _fail() -> None:
    raise PlannedFailure("failed on purpose")


@_job("chaos.tick", second="*")
def tick(scheduled_at: datetime) -> None:
    """Every second: succeeds at once."""
    _traced("chaos.tick", scheduled_at, "ok", lambda: None)


@_job("chaos.talk", second="*")
def talk(scheduled_at: datetime) -> None:
    """Every second: prints a line and succeeds."""
    _traced("chaos.talk", scheduled_at, "ok", lambda: print(f"talk {scheduled_at.isoformat()}"))


@_job("chaos.fail", second="*")
def fail(scheduled_at: datetime) -> None:
    """Every second: fails."""
    _traced("chaos.fail", scheduled_at, "fail", _fail)


@_job("chaos.catchup", second="*", coalesce=False)
def catchup(scheduled_at: datetime) -> None:
    """Every second, coalesce=False: after an outage every missed fire time runs."""
    _traced("chaos.catchup", scheduled_at, "ok", lambda: time.sleep(0.2))


@_job("chaos.every3", second="*/3")
def every3(scheduled_at: datetime) -> None:
    """Every 3 seconds: half a second of work."""
    _traced("chaos.every3", scheduled_at, "ok", lambda: time.sleep(0.5))


@_job("chaos.slow", second="*/2", max_instances=1)
def slow(scheduled_at: datetime) -> None:
    """Every 2 seconds, runs 4.5 s: every other fire time or so is skipped."""
    _traced("chaos.slow", scheduled_at, "ok", lambda: time.sleep(SLOW_SECONDS))


@_job("chaos.slow_fail", second="*/3", max_instances=1)
def slow_fail(scheduled_at: datetime) -> None:
    """Every 3 seconds, runs 4 s and fails."""

    def body() -> None:
        time.sleep(4)
        _fail()

    _traced("chaos.slow_fail", scheduled_at, "fail", body)


@_job("chaos.surrogate", second="*/2")
def surrogate(scheduled_at: datetime) -> None:
    """Every 2 seconds: prints a file name that is not UTF-8, as os.fsdecode gives it."""
    _traced("chaos.surrogate", scheduled_at, "ok", lambda: print(os.fsdecode(b"report-\xff.csv")))


@_job("chaos.nul", second="*/3")
def nul(scheduled_at: datetime) -> None:
    """Every 3 seconds: prints NUL characters."""
    _traced("chaos.nul", scheduled_at, "ok", lambda: print("before\x00after\x00"))


def _megabyte() -> None:
    line = "x" * 1023
    for _ in range(1024):
        print(line)


@_job("chaos.megabyte", second="*/15")
def megabyte(scheduled_at: datetime) -> None:
    """Every 15 seconds: prints a megabyte, in 1 KiB lines."""
    _traced("chaos.megabyte", scheduled_at, "ok", _megabyte)


def _raw_bytes() -> None:
    # What a job that pipes a subprocess's output through does; plain Python allows it.
    sys.stdout.buffer.write(b"raw bytes \xff\xfe\n")
    sys.stdout.buffer.flush()


@_job("chaos.raw_bytes", second="*/4")
def raw_bytes(scheduled_at: datetime) -> None:
    """Every 4 seconds: writes bytes to sys.stdout.buffer."""
    _traced("chaos.raw_bytes", scheduled_at, "ok", _raw_bytes)


def _unprintable() -> None:
    raise UnprintableError()


@_job("chaos.bad_str", second="*/5")
def bad_str(scheduled_at: datetime) -> None:
    """Every 5 seconds: fails with an exception whose str() raises."""
    _traced("chaos.bad_str", scheduled_at, "fail", _unprintable)


def _odd_microsecond(scheduled_at: datetime) -> bool:
    return scheduled_at.microsecond % 2 == 1


@_job(
    "chaos.retry",
    second="*/4",
    retries=2,
    retry_backoff=Backoff(base=0.5, cap=2, jitter=True),
)
def retry(scheduled_at: datetime) -> None:
    """Every 4 seconds, fails, and is tried again up to twice, 0-0.5 s then 0-1 s later. An
    attempt's ``scheduled_at`` is its due time: it succeeds when that has an odd
    microsecond (a fire time has none), so some retries succeed and some fail again."""
    if _odd_microsecond(scheduled_at):
        _traced("chaos.retry", scheduled_at, "ok", lambda: None)
    else:
        _traced("chaos.retry", scheduled_at, "fail", _fail)


@_job("chaos.queue", second="*/2", overlap="queue")
def queue(scheduled_at: datetime) -> None:
    """Every 2 seconds, runs 3 s, overlap="queue": the fire time during a run waits its
    turn and starts when it ends (the one after it is skipped)."""
    _traced("chaos.queue", scheduled_at, "ok", lambda: time.sleep(3))
