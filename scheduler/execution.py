"""Where a claimed run's body runs: the seam between the runtime and an executor.

The runtime decides *whether* and *when* a run starts: it claims the fire
time (one row per (job, fire time), the fence between schedulers), keeps
each job's ``max_instances`` slots, records the fire times that do not run,
and will own retries. An executor decides only *where* a run's body runs:
on this process's worker threads (:class:`ThreadRunExecutor`, the first
implementation), and in the coming issues in a child process (hard
timeouts), on a Celery worker fleet, or through ``django.tasks``.

Contract of a :class:`RunExecutor`
----------------------------------
* It receives :class:`RunOrder` s: a claimed run (its ``running`` row exists:
  job id, fire time, run row id) and the attempt number. A few orders of a
  job come together when they must run one after the other (a backlog of a
  job with ``coalesce=False``): :meth:`RunExecutor.submit` takes them in order
  and runs them in that order, never side by side.
* Where the body runs, it is carried out by :meth:`Runner.carry_out
  <scheduler.runner.Runner.carry_out>`, the one recorder every path uses: it
  looks the job up by id among the jobs registered in code (nothing read from
  the database is ever imported or evaluated), checks that the run may still
  start (no stop signal, the lease still held, not beyond the job's
  ``misfire_grace_time``), records the real start, the output and the
  outcome, and finishes the row in a final status. An executor that runs
  bodies elsewhere (another process, another machine) makes a ``Runner``
  there and calls the same method with the same order.
* ``submit`` returns a future that completes once every order's row was
  handed to the recorder, and that fails only if the executor itself failed
  (a job's exception is an outcome, recorded, not an error of the future). A
  future that is cancelled means none of its orders started: the runtime
  records scheduled ones ``missed`` and queues manual ones again.
* It keeps no claims, no ``max_instances`` accounting, no retries and no
  history of its own: those stay in the runtime (``claims``, ``runner.Executor``,
  ``results``), the same for every executor.
* :meth:`RunExecutor.free` says how many more orders could start at once (the
  main loop claims ahead no more fire times than that);
  :meth:`RunExecutor.start` readies it as the scheduler starts (its workers
  started ahead of the first fire time); :meth:`RunExecutor.cancel_waiting`
  cancels the orders not started yet (a stop); :meth:`RunExecutor.shutdown`
  ends the executor.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from scheduler.pool import WorkerPool

if TYPE_CHECKING:
    from apscheduler.job import Job

    from scheduler.models import JobRun


@dataclass(frozen=True, slots=True)
class RunOrder:
    """One run handed to an executor.

    ``run`` is its claimed ``running`` row; ``None`` only for a fire time that
    the main loop did not claim (a submission outside its claim book), which
    the runner claims first, where it runs. ``job`` is APScheduler's job, for a
    body that runs in this process (its misfire grace time; the function of a
    job added to APScheduler without a declaration in code); an executor that
    sends orders elsewhere sends the rest.
    """

    job_id: str
    scheduled_at: datetime
    run: JobRun | None = None
    manual: bool = False
    attempt: int = 1
    job: Job | None = None

    @property
    def run_id(self) -> int | None:
        return self.run.pk if self.run is not None else None


class CarriesOut(Protocol):
    """The runner, as an executor running bodies in this process sees it."""

    def carry_out_in_order(self, orders: Sequence[RunOrder]) -> None: ...


class RunExecutor(ABC):
    """Where claimed runs are carried out (see the module docstring for the contract)."""

    def start(self) -> None:  # noqa: B027 - optional: most executors have nothing to start
        """Get ready to take orders (the scheduler starts): a pool starts its workers."""

    @abstractmethod
    def submit(self, orders: Sequence[RunOrder]) -> Future[Any]:
        """Carry out ``orders`` one after the other; see the contract."""

    @abstractmethod
    def free(self) -> int:
        """How many more orders could start at once now."""

    @abstractmethod
    def cancel_waiting(self) -> None:
        """Cancel the submissions none of whose orders started yet."""

    @abstractmethod
    def shutdown(self, wait: bool = True) -> None:
        """End the executor (after ``cancel_waiting``, if nothing more is to start)."""


class ThreadRunExecutor(RunExecutor):
    """Runs the bodies on this process's worker threads (``pool.WorkerPool``): each
    submission on one thread, its orders in turn."""

    def __init__(self, max_workers: int, runner: CarriesOut) -> None:
        self._pool = WorkerPool(max_workers)
        self._max_workers = max_workers
        self._runner = runner
        self._busy = 0  # submissions not finished yet
        self._busy_lock = threading.Lock()

    def start(self) -> None:
        self._pool.prestart()

    def submit(self, orders: Sequence[RunOrder]) -> Future[Any]:
        future: Future[Any] = self._pool.submit(self._runner.carry_out_in_order, orders)
        with self._busy_lock:
            self._busy += 1
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future[Any]) -> None:
        with self._busy_lock:
            self._busy -= 1

    def free(self) -> int:
        return self._max_workers - self._busy

    def cancel_waiting(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait)
