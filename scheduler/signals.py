"""Django signals the scheduler sends: a public API for code that wants to know.

Connect receivers as to any Django signal (in an ``AppConfig.ready``, say)::

    from django.dispatch import receiver
    from scheduler import signals

    @receiver(signals.run_finished)
    def tell_ops(sender, run, **kwargs):
        if run.status == "failed":
            ...

=====================  ==========================================  ===========================
signal                 keyword arguments                           sent
=====================  ==========================================  ===========================
``run_started``        ``run`` (its ``JobRun``, ``running``)       when its body starts, in
                                                                   the process that runs it
``run_finished``       ``run`` (its ``JobRun``, final status)      once its row is written
``fire_time_missed``   ``job_id``, ``scheduled_at``, ``reason``,   once its ``missed`` row is
                       ``run`` (the row)                           written
``run_skipped``        ``job_id``, ``scheduled_at``, ``reason``,   once its ``skipped`` row
                       ``run`` (the row)                           is written
``scheduler_active``   ``instance_id``, ``hostname``, ``pid``      this process took the lease
``lease_lost``         ``instance_id``, ``hostname``, ``pid``      this process lost it, or
                                                                   gave it up at a stop
=====================  ==========================================  ===========================

``sender`` is the class that sends (the results writer, the runner, the lease).
Rows are written before their signal, so a receiver can read them back. A
receiver runs in the scheduler's own thread (the results writer's, a worker's,
the lease's): keep it short, and hand slow work (a mail, an HTTP call) to a
thread or queue of your own. An exception in a receiver is logged
(``scheduler.signals``) and never reaches the scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django.dispatch import Signal

from scheduler.text import describe_exception, type_name

if TYPE_CHECKING:
    from scheduler.models import JobRun

logger = logging.getLogger(__name__)

run_started = Signal()
run_finished = Signal()
fire_time_missed = Signal()
run_skipped = Signal()
scheduler_active = Signal()
lease_lost = Signal()


def send(signal: Signal, sender: Any, **kwargs: Any) -> None:
    """Send ``signal`` to every receiver; one that raises is logged, never raised."""
    if not signal.has_listeners(sender):
        return  # the usual case: nothing connected, nothing to build
    for receiver, result in signal.send_robust(sender, **kwargs):
        if isinstance(result, BaseException):
            logger.error(
                "A receiver of a scheduler signal raised (%s): %s",
                type_name(type(receiver)) if not callable(receiver) else _name(receiver),
                describe_exception(result),
            )


def _name(receiver: Any) -> str:
    name = getattr(receiver, "__qualname__", None)
    module = getattr(receiver, "__module__", None)
    return f"{module}.{name}" if isinstance(name, str) and isinstance(module, str) else "?"


def started(sender: Any, run: JobRun) -> None:
    send(run_started, sender, run=run)


def written(sender: Any, runs: Iterable[JobRun]) -> None:
    """Rows just written: finished runs, and fire times that did not run."""
    from scheduler.models import RunStatus

    not_run = {RunStatus.MISSED: fire_time_missed, RunStatus.SKIPPED: run_skipped}
    for run in runs:
        signal = not_run.get(RunStatus(run.status)) if run.trigger == "schedule" else None
        if signal is None:
            send(run_finished, sender, run=run)
            continue
        send(
            signal,
            sender,
            job_id=run.job_id,
            scheduled_at=run.scheduled_at,
            reason=run.exception,
            run=run,
        )
