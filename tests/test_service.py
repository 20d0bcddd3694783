"""scheduler/service.py: the process's parts and its role changes, in process.

The whole process (signals, start, stop, take-over) is tested through the
real ``runapscheduler`` in test_process.py, test_ha.py and test_robustness.py.
"""

from __future__ import annotations

import pytest
from apscheduler.schedulers import SchedulerNotRunningError

from scheduler.service import Service, make_parts


def test_a_lease_lost_while_stopping_leaves_the_stop_to_the_stop() -> None:
    """The lease can run out during a stop (a SQLite write lock held it up): the demotion
    must not pause a scheduler that the stop has already shut down."""
    service = Service(write=lambda text: None)
    service.parts = make_parts()  # its scheduler is not running, as after the stop
    service._stopping = True
    service.demoted()  # no SchedulerNotRunningError


def test_a_lease_lost_without_a_stop_pauses_the_main_loop() -> None:
    service = Service(write=lambda text: None)
    service.parts = make_parts()
    with pytest.raises(SchedulerNotRunningError):
        service.demoted()  # (a running scheduler is paused; this one is not running)
