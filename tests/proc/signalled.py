"""Jobs and receivers of the scheduler's signals, for tests/test_signals.py: each signal
received marks "signal <name> [<job id> <status>] pid=<pid>" in the ``PROC_MARKS`` file."""

import os
import time
from typing import Any

from scheduler import cron, signals
from tests.proc.marks import mark


def _receiver(name: str) -> Any:
    def receive(sender: Any, **kwargs: Any) -> None:
        run = kwargs.get("run")
        what = f" {run.job_id} {run.status}" if run is not None else ""
        mark(f"signal {name}{what} pid={os.getpid()}")

    return receive


_receivers = {}
for _name in (
    "run_started",
    "run_finished",
    "fire_time_missed",
    "run_skipped",
    "scheduler_active",
    "lease_lost",
):
    _receivers[_name] = _receiver(_name)
    getattr(signals, _name).connect(_receivers[_name])


@cron(second="*", id="signalled.fails")
def fails() -> None:
    raise RuntimeError("it fails")


@cron(second="*", id="signalled.slow")
def slow() -> None:
    """Runs 1.5 s, every second: every other fire time is skipped."""
    time.sleep(1.5)
