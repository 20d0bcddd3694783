"""The jobs that every system under test runs, and the record each run leaves.

Configured by environment variables, so the three systems run the same jobs:

BENCH_SCENARIO  accuracy | accuracy_first | load | store | history | isolation
BENCH_JOBS      how many jobs
BENCH_OBS       file the jobs append one line per run to: "<job index> <fire time> <start time>"
BENCH_HOUR0     store scenario: first hour of the daily schedules (keeps them from falling due)
BENCH_SHAPE     store scenario: "few" (default: 1,200 distinct schedules, "M H * * *") or
                "distinct" (every job its own schedule, "S M H * * *")
BENCH_START     accuracy_first: the jobs' start_date (POSIX seconds, a whole second)
BENCH_WORK      load scenario: "sleep" (default, 1 ms of waiting, like I/O) or "spin" (1 ms of CPU)

A run measures its own start with ``time.time()`` as its first statement. Plain
APScheduler and django-apscheduler do not tell a job its fire time, so there
the job derives it from its start: every second on the whole second
(accuracy) or every second at a fixed phase (load); that holds while a run is
less than a second late. This project passes ``scheduled_at``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

# Interval jobs of the load scenario fire at BASE + phase + k seconds.
PHASE_BASE = datetime(2024, 1, 1, tzinfo=UTC)

_fd: int | None = None
_fd_lock = threading.Lock()


def _out() -> int:
    global _fd
    if _fd is None:
        with _fd_lock:
            if _fd is None:
                path = os.environ.get("BENCH_OBS") or os.devnull
                _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _fd


def _observe(index: int, fire: float, start: float) -> None:
    # One small O_APPEND write per run: lines of concurrent runs never interleave.
    os.write(_out(), f"{index} {fire:.6f} {start:.6f}\n".encode())


def _work() -> None:
    if os.environ.get("BENCH_WORK") == "spin":
        end = time.perf_counter() + 0.001
        while time.perf_counter() < end:
            pass
    else:
        time.sleep(0.001)


# -- job bodies ----------------------------------------------------------------------


def accuracy(index: int) -> None:
    """Every second, on the whole second: the fire time is the start rounded down."""
    start = time.time()
    _observe(index, math.floor(start), start)


def accuracy_ours(index: int, scheduled_at: datetime) -> None:
    start = time.time()
    _observe(index, scheduled_at.timestamp(), start)


def accuracy_first(*, index: int, label: str) -> None:
    """The independent harness's shape: one shared function, keyword arguments, every
    second on the whole second from its start_date."""
    start = time.time()
    _observe(index, math.floor(start), start)


def accuracy_first_ours(*, index: int, label: str, scheduled_at: datetime) -> None:
    start = time.time()
    _observe(index, scheduled_at.timestamp(), start)


def load(index: int, phase: float) -> None:
    """Every second at ``phase`` past the whole second; about 1 ms of work."""
    start = time.time()
    _work()
    _observe(index, math.floor(start - phase) + phase, start)


def load_ours(index: int, scheduled_at: datetime) -> None:
    start = time.time()
    _work()
    _observe(index, scheduled_at.timestamp(), start)


def noop() -> None:
    """Does nothing."""


# -- schedules -------------------------------------------------------------------------


def phase(index: int, count: int) -> float:
    """Load jobs are spread evenly over the second (rounded to the microsecond)."""
    return round(index / count, 6)


def store_schedule(index: int, hour0: int) -> tuple[int, int]:
    """(minute, hour) of the daily job ``index``: 20 hours from hour0 on, never the next two."""
    return index % 60, (hour0 + (index // 60) % 20) % 24


# Distinct daily schedules in the 20 hours from hour0 on: one per second of them.
DISTINCT_PER_BLOCK = 20 * 3600
# Past that many jobs (72,000), each further block of 72,000 adds a day-of-week
# restriction of its own, so that every job's schedule still differs.
DISTINCT_WEEKDAYS = ("*", "mon-fri", "sat,sun", "mon,wed,fri", "tue,thu")


def store_fields(index: int, hour0: int, shape: str) -> dict[str, str]:
    """The cron fields of the daily store job ``index`` (fields APScheduler and ``@cron``
    both take): "few" repeats 1,200 schedules ("M H * * *"); "distinct" gives each job its
    own second, minute and hour ("S M H * * *"), and past 72,000 jobs its own weekdays too."""
    if shape == "few":
        minute, hour = store_schedule(index, hour0)
        return {"minute": str(minute), "hour": str(hour)}
    if shape != "distinct":
        raise ValueError(f"unknown BENCH_SHAPE {shape!r}")
    block, offset = divmod(index, DISTINCT_PER_BLOCK)
    if block >= len(DISTINCT_WEEKDAYS):
        raise ValueError(f"at most {len(DISTINCT_WEEKDAYS) * DISTINCT_PER_BLOCK} distinct jobs")
    fields = {
        "second": str(offset % 60),
        "minute": str(offset // 60 % 60),
        "hour": str((hour0 + offset // 3600) % 24),
    }
    if block:
        fields["day_of_week"] = DISTINCT_WEEKDAYS[block]
    return fields


def params() -> tuple[str, int, int]:
    scenario = os.environ.get("BENCH_SCENARIO", "")
    count = int(os.environ.get("BENCH_JOBS", "0") or 0)
    hour0 = int(os.environ.get("BENCH_HOUR0", "0") or 0)
    return scenario, count, hour0


def start_date() -> datetime:
    return datetime.fromtimestamp(int(os.environ["BENCH_START"]), UTC)


def shape() -> str:
    return os.environ.get("BENCH_SHAPE") or "few"


def first_kwargs(index: int) -> dict[str, Any]:
    return {"index": index, "label": f"first fires, job {index}"}


def aps_jobs() -> list[dict[str, Any]]:
    """The jobs as ``scheduler.add_job`` keyword arguments (plain APScheduler, django-apscheduler).

    Like the django-apscheduler README: a trigger object, an id, ``max_instances=1``,
    ``replace_existing=True``; everything else is APScheduler's default.
    """
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    scenario, count, hour0 = params()
    store_shape = shape()
    jobs = []
    for i in range(count):
        if scenario == "accuracy":
            job = dict(func=accuracy, trigger=CronTrigger(second="*", timezone=UTC), args=(i,))
            job["id"] = f"bench.accuracy.{i:05d}"
        elif scenario == "accuracy_first":
            trigger = CronTrigger(second="*", start_date=start_date(), timezone=UTC)
            job = dict(func=accuracy_first, trigger=trigger, kwargs=first_kwargs(i))
            job["id"] = f"bench.first.{i:05d}"
        elif scenario == "load":
            start = PHASE_BASE + timedelta(seconds=phase(i, count))
            job = dict(
                func=load,
                trigger=IntervalTrigger(seconds=1, start_date=start, timezone=UTC),
                args=(i, phase(i, count)),
                id=f"bench.load.{i:05d}",
            )
        elif scenario == "store":
            job = dict(
                func=noop,
                trigger=CronTrigger(**store_fields(i, hour0, store_shape), timezone=UTC),
                id=f"bench.store.{i:05d}",
            )
        else:
            raise ValueError(f"unknown BENCH_SCENARIO {scenario!r}")
        job.update(max_instances=1, replace_existing=True)
        jobs.append(job)
    return jobs


def declare_ours() -> None:
    """The same jobs, declared with this project's decorators."""
    from scheduler import cron, interval

    scenario, count, hour0 = params()
    store_shape = shape()
    for i in range(count):
        if scenario == "accuracy":
            cron(second="*", id=f"bench.accuracy.{i:05d}", args=(i,), timezone="UTC")(accuracy_ours)
        elif scenario == "accuracy_first":
            cron(
                second="*",
                start_date=start_date(),
                timezone="UTC",
                kwargs=first_kwargs(i),
                id=f"bench.first.{i:05d}",
            )(accuracy_first_ours)
        elif scenario == "load":
            start = PHASE_BASE + timedelta(seconds=phase(i, count))
            interval(seconds=1, start_date=start, id=f"bench.load.{i:05d}", args=(i,))(load_ours)
        elif scenario == "store" and store_shape == "few":
            minute, hour = store_schedule(i, hour0)
            cron(f"{minute} {hour} * * *", id=f"bench.store.{i:05d}", timezone="UTC")(noop)
        elif scenario == "store":
            # Six fields ("S M H * * *"): cron fields, as a crontab string has five.
            fields = store_fields(i, hour0, store_shape)
            cron(**fields, id=f"bench.store.{i:05d}", timezone="UTC")(noop)
    if scenario == "history":
        cron("0 3 1 1 *", id="bench.history.noop", timezone="UTC")(noop)
    if scenario == "isolation":
        cron("0 3 1 1 *", id="bench.isolation.noop", timezone="UTC", isolation="process")(noop)
