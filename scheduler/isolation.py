"""Runs in a child process: a timeout that really stops a run, a crash that cannot take the
scheduler down, memory given back after each run.

A Python thread cannot be stopped from outside, so a job declared with
``isolation="process"`` runs in a child process. Children are forked from a
server (``multiprocessing``'s fork server) that imported Django and the job
modules once (``scheduler.forkserver``), so a run does not pay for a new
interpreter; the server holds no database connection, so none is ever
shared across a fork (a job that uses the database opens its own).

The child looks the job up by id among the jobs registered in code, runs it
with its output captured, and sends back plain values (status, exception
text, traceback, output, duration). The worker thread that started it waits
for them, and the run is recorded by the runner as any other run:

* past ``timeout`` seconds the child gets SIGTERM, which raises ``TimedOut``
  in it: a job asleep or blocked in a call that signals interrupt stops
  there, and its output and the traceback of where it was come back; one
  that does not stop within ``KILL_AFTER`` seconds gets SIGKILL, and only
  the fact is recorded;
* a child that dies without a word (a segfault, ``os._exit``, the kernel's
  OOM killer) is recorded failed with its exit code or signal;
* at a stop, children still running when the shutdown grace ends are killed
  with the scheduler's other runs marked ``interrupted``.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from dataclasses import astuple, replace
from datetime import datetime
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from scheduler.body import (
    FAILED,
    INTERRUPTED,
    TIMED_OUT,
    Outcome,
    TimedOut,
    make_call,
    run_here,
)

# Seconds a child has to stop after SIGTERM (its timeout, or a stop) before SIGKILL.
KILL_AFTER = 5.0
PRELOAD = "scheduler.forkserver"


class Isolation:
    """The child processes of one scheduler process: started from the fork server, waited
    for by the worker thread that started each, stopped at shutdown."""

    def __init__(self) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([PRELOAD])
        self._jobs: dict[BaseProcess, str] = {}  # the children running, each -> its job
        self._stopped: dict[BaseProcess, str] = {}  # children told to stop -> why
        self._lock = threading.Lock()
        self._closing = ""  # why every child was killed (the scheduler stops), if it was

    def start(self) -> None:
        """Start the fork server now (Django and the job modules load in it, about half a
        second), not at the first run, which would pay for it."""
        from multiprocessing import forkserver

        forkserver.ensure_running()

    def run(
        self,
        job_id: str,
        scheduled_at: datetime | None,
        timeout: float | None,
        limit: int,
        arguments: Any = None,
        run_id: int | None = None,
    ) -> Outcome:
        """Run the job ``job_id`` (registered in code) in a child, with a run's own
        ``arguments`` (plain JSON values, as its row holds them); its outcome."""
        receiver, sender = self._context.Pipe(duplex=False)
        child = self._context.Process(
            target=_child,
            args=(job_id, scheduled_at, limit, sender, arguments, run_id),
            name=f"scheduler-run-{job_id}",
            daemon=True,
        )
        start = time.monotonic()
        with self._lock:
            child.start()
            self._jobs[child] = job_id
        sender.close()  # the child holds the only writing end: EOF when it dies
        try:
            outcome = self._wait(child, receiver, start, timeout)
            if self._closing:
                outcome = Outcome(INTERRUPTED, self._closing, "", "", 0.0)
            elif child in self._stopped:
                outcome = Outcome(
                    INTERRUPTED, self._stopped[child], outcome.traceback, outcome.output, 0.0
                )
            # The run's duration is the parent's: from the child's start to its outcome,
            # the span its timeout counts (the child's own clock starts after the fork).
            outcome = replace(outcome, duration=time.monotonic() - start)
        finally:
            receiver.close()
            child.join(KILL_AFTER)
            with self._lock:
                self._jobs.pop(child, None)
                self._stopped.pop(child, None)
        return outcome

    def _wait(
        self, child: BaseProcess, receiver: Connection, start: float, timeout: float | None
    ) -> Outcome:
        """The child's outcome, or what became of it (``run`` sets the duration)."""
        left = None if timeout is None else max(0.0, start + timeout - time.monotonic())
        if wait([receiver, child.sentinel], left):
            outcome = _receive(receiver)
            if outcome is not None:
                return outcome
            child.join(KILL_AFTER)
            return Outcome(FAILED, _death(child), "", "", 0.0, None)
        # The timeout passed: ask the child to stop, then make it.
        child.terminate()
        if wait([receiver], KILL_AFTER):
            outcome = _receive(receiver)
            if outcome is not None:
                return outcome
        child.kill()
        return Outcome(
            TIMED_OUT,
            f"Timed out: stopped after {timeout:g} s (timeout); it did not stop within "
            f"{KILL_AFTER:g} s of SIGTERM and was killed, so its output is lost.",
            "",
            "",
            0.0,
            True,
        )

    def stop(self, job_id: str, reason: str) -> int:
        """Stop the runs of ``job_id`` going on in children (SIGTERM, SIGKILL after
        ``KILL_AFTER`` if need be: their worker threads wait for that); they are recorded
        ``interrupted`` with ``reason``. How many were told to stop."""
        with self._lock:
            children = [
                child
                for child, runs_job in self._jobs.items()
                if runs_job == job_id and child not in self._stopped
            ]
            for child in children:
                self._stopped[child] = reason
        for child in children:
            if child.is_alive():
                child.terminate()
        if children:
            threading.Thread(
                target=_kill_late, args=(children,), name="scheduler-stop", daemon=True
            ).start()
        return len(children)

    def kill_all(self, reason: str) -> None:
        """Kill every child still running: the scheduler leaves now, and a child must not
        outlive it (the fork server's children are not ours to wait for). Their runs are
        recorded ``interrupted`` with ``reason``."""
        with self._lock:
            self._closing = reason
            children = list(self._jobs)
        for child in children:
            if child.is_alive():
                child.kill()


def _kill_late(children: list[BaseProcess]) -> None:
    """SIGKILL the stopped children that outlive ``KILL_AFTER`` seconds after SIGTERM."""
    deadline = time.monotonic() + KILL_AFTER
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()


def _receive(receiver: Connection) -> Outcome | None:
    try:
        values = receiver.recv()
    except (EOFError, OSError):
        return None
    return Outcome(*values)


def _death(child: BaseProcess) -> str:
    code = child.exitcode
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"The job's process died of {name} before it could report (a crash of the job)."
    return (
        f"The job's process ended with exit code {code} before it could report "
        "(os._exit, or a crash of the job)."
    )


# -- in the child ------------------------------------------------------------------------


def _stop_now(signum: int, frame: Any) -> None:
    raise TimedOut()


def _child(
    job_id: str,
    scheduled_at: datetime | None,
    limit: int,
    sender: Connection,
    arguments: Any = None,
    run_id: int | None = None,
) -> None:
    """The child's body: run the job registered as ``job_id`` and send back its outcome
    (capped and made storable by the parent, as a run in a thread is)."""
    from scheduler.registry import registry

    signal.signal(signal.SIGTERM, _stop_now)
    spec = registry.get(job_id)
    retry_on: tuple[type[BaseException], ...] = spec.retry_on if spec is not None else ()
    if spec is not None:
        at = scheduled_at or datetime.now().astimezone()
        call = make_call(spec, None, at, arguments, run_id)
    else:

        def call() -> None:
            raise LookupError(f"Job {job_id!r} is not registered in this scheduler's code.")

    outcome = run_here(call, limit, retry_on=retry_on)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sender.send(astuple(outcome))
    sender.close()
