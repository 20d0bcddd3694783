"""The Celery app of the fleet scenarios (7, 7b): one app for both systems' workers, Beat
and this project's scheduler (``SCHEDULER["CELERY_APP"]`` of bench/fleet_settings.py).

Configured by environment variables:

BENCH_BROKER     the Redis URL (the bench's own throwaway server)
BENCH_BEAT_JOBS  Celery Beat only: how many entries its ``beat_schedule`` has, each the task
                 ``bench.beat_tick`` every second on the whole second (``WholeSecond``)
BENCH_OBS        the file the jobs append "<job> <fire time> <start> <sent>" lines to

As a project's celery.py: Django set up first (the workers run this project's task
``scheduler.run``, which reads and writes the history table), the scheduler's task
included, no result backend (Celery's default: ``task_ignore_result``, as a default Beat
setup has). Every message is stamped with the time it was published
(``before_task_publish``, header ``bench_sent``) by whichever process sends it, so both
systems' dispatch is timed by the same code; in Beat's process, also with the fire time
its schedule found due (header ``bench_fire``).
"""

from __future__ import annotations

import math
import os
import time
from datetime import timedelta
from typing import Any

import django
from celery import Celery, shared_task
from celery.schedules import schedstate, schedule
from celery.signals import beat_init, before_task_publish, worker_ready
from django.apps import apps

from bench.fleet import READY

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.fleet_settings")
if not apps.ready:  # runapscheduler imports this app with Django already set up
    django.setup()

SENT_HEADER = "bench_sent"
FIRE_HEADER = "bench_fire"
BEAT_TASK = "bench.beat_tick"
# Celery Beat wakes up this much before an entry's next run (Scheduler.adjust's drift).
BEAT_DRIFT = 0.010

app = Celery("bench", broker=os.environ.get("BENCH_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    include=["scheduler.worker", "bench.fleet_app"],
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    enable_utc=True,
    timezone="UTC",
)


# Beat's process: the fire time of the entry being sent (WholeSecond.is_due).
_firing: float | None = None


class WholeSecond(schedule):  # type: ignore[misc]  # Celery is untyped
    """Every second on the whole second, as ``@cron(second="*")`` fires.

    Celery's ``schedule(timedelta(seconds=1))`` counts from the last send (next = last
    send + 1 s), so its fire times drift by Beat's own lateness. This one is due once the
    clock has passed into a whole second after the last send: each entry sends at most
    once per whole second, the first send of second S being S's run (a Beat more than a
    second behind skips seconds: missed, as Beat's own schedules coalesce)."""

    def __init__(self, app: Any = None) -> None:
        super().__init__(run_every=timedelta(seconds=1), app=app)

    def is_due(self, last_run_at: Any) -> schedstate:
        global _firing
        now = time.time()
        last = self.maybe_make_aware(last_run_at).timestamp()
        # Beat wakes BEAT_DRIFT before the time returned: asked for that much later, it
        # wakes on the second instead of polling its heap for the last 10 ms.
        wait = math.floor(now) + 1 - now + BEAT_DRIFT
        due = math.floor(now) > math.floor(last)
        if due:
            # The second this send serves. Beat's tick publishes the entry it found due
            # right after asking (Scheduler.tick: is_due, reserve, apply_entry, in its one
            # thread), so _stamp puts it in that message.
            _firing = float(math.floor(now))
        return schedstate(due, wait)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.__class__, (None,)

    def __repr__(self) -> str:
        return "<every whole second>"


def _beat_schedule(count: int) -> dict[str, dict[str, Any]]:
    """One entry per job, as a project lists its periodic tasks in ``beat_schedule``."""
    return {
        f"bench.fleet.{i:05d}": {"task": BEAT_TASK, "schedule": WholeSecond(), "args": (i,)}
        for i in range(count)
    }


if os.environ.get("BENCH_BEAT_JOBS"):
    app.conf.beat_schedule = _beat_schedule(int(os.environ["BENCH_BEAT_JOBS"]))


# -- what the workers run ---------------------------------------------------------------

_fd: int | None = None


def observe(index: int, fire: float, start: float, sent: float | None) -> None:
    """One O_APPEND write per run: lines of concurrent pool processes never interleave."""
    global _fd
    if _fd is None:
        path = os.environ.get("BENCH_OBS") or os.devnull
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sent_text = f"{sent:.6f}" if sent is not None else "-"
    os.write(_fd, f"{index} {fire:.6f} {start:.6f} {sent_text}\n".encode())


def header(request: Any, name: str) -> float | None:
    """A time the sender stamped on the message (custom headers are attributes of the
    task's request)."""
    value = getattr(request, name, None)
    return float(value) if value is not None else None


def sent_at(request: Any) -> float | None:
    return header(request, SENT_HEADER)


@shared_task(bind=True, name=BEAT_TASK, ignore_result=True)
def beat_tick(self: Any, index: int) -> None:
    """Celery Beat's job. Beat does not tell a task its fire time: the schedule stamped it
    on the message (WholeSecond, _stamp)."""
    start = time.time()
    fire = header(self.request, FIRE_HEADER)
    if fire is None:
        raise RuntimeError(f"message without its {FIRE_HEADER} header")
    observe(index, fire, start, sent_at(self.request))


# -- signals ------------------------------------------------------------------------------


def _stamp(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    global _firing
    if headers is not None:
        headers[SENT_HEADER] = time.time()
        if _firing is not None:  # Beat's process only
            headers[FIRE_HEADER], _firing = _firing, None


def _ready(**kwargs: Any) -> None:
    # Straight to the file descriptor: Celery redirects sys.stdout to its logger, and the
    # bench runs workers and Beat at their default log level (no line per task).
    os.write(1, f"{READY}\n".encode())


before_task_publish.connect(_stamp, weak=False)
worker_ready.connect(_ready, weak=False)
beat_init.connect(_ready, weak=False)
