"""scheduler/signals.py: the signals the scheduler sends, in process on the test database
(the runner and results writer a ``runjob`` has), and from a real ``runapscheduler``."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from scheduler import signals
from scheduler.models import JobRun
from tests.helpers import SECOND, T0, claimed, runner
from tests.proc.harness import SchedulerEnv, wait_for


@pytest.fixture
def heard() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """Every signal sent while the test runs: (name, keyword arguments)."""
    found: list[tuple[str, dict[str, Any]]] = []
    names = ("run_started", "run_finished", "fire_time_missed", "run_skipped")
    receivers = {}
    for name in names:

        def receiver(sender: Any, name: str = name, **kwargs: Any) -> None:
            kwargs.pop("signal", None)
            found.append((name, kwargs))

        receivers[name] = receiver
        getattr(signals, name).connect(receiver)
    yield found
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


@pytest.mark.django_db(transaction=True)
def test_a_run_sends_started_then_finished_with_its_final_row(heard) -> None:
    run = claimed("t.signals")

    def job() -> None:
        assert [name for name, _ in heard] == ["run_started"]
        raise ValueError("no")

    runner.execute(run, job)
    assert [name for name, _ in heard] == ["run_started", "run_finished"]
    finished = heard[1][1]["run"]
    assert finished.pk == run.pk and finished.status == "failed"
    # Written before it was sent: a receiver reads the final row back.
    assert JobRun.objects.get(pk=run.pk).status == "failed"


@pytest.mark.django_db(transaction=True)
def test_fire_times_that_did_not_run_send_missed_or_skipped_once_written(heard) -> None:
    runner.did_not_run("t.signals", "A job", "missed", [T0, T0 + SECOND], "Missed: too late.")
    runner.did_not_run("t.signals", "A job", "skipped", [T0 + 2 * SECOND], "Skipped: busy.")
    assert [(name, kw["scheduled_at"]) for name, kw in heard] == [
        ("fire_time_missed", T0),
        ("fire_time_missed", T0 + SECOND),
        ("run_skipped", T0 + 2 * SECOND),
    ]
    assert heard[0][1]["job_id"] == "t.signals" and heard[0][1]["reason"] == "Missed: too late."
    assert JobRun.objects.filter(status="missed").count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_raises_is_logged_and_the_run_is_recorded(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Django's send_robust logs the error with str() of it, which raises here: logging
    # then reports its own error on stderr, as in production (pytest would raise it).
    monkeypatch.setattr(logging, "raiseExceptions", False)

    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("str() of this exception raises too")

    def broken(sender: Any, **kwargs: Any) -> None:
        raise Broken()

    signals.run_finished.connect(broken)
    try:
        run = claimed("t.signals")
        with caplog.at_level(logging.ERROR, logger="scheduler.signals"):
            runner.execute(run, lambda: None)
    finally:
        signals.run_finished.disconnect(broken)
    assert JobRun.objects.get(pk=run.pk).status == "succeeded"
    messages = [r.getMessage() for r in caplog.records if r.name == "scheduler.signals"]
    assert messages == [
        "A receiver of a scheduler signal raised (tests.test_signals.test_a_receiver_that_"
        "raises_is_logged_and_the_run_is_recorded.<locals>.broken): tests.test_signals.test_a_"
        "receiver_that_raises_is_logged_and_the_run_is_recorded.<locals>.Broken: <str() of the "
        "exception raised RuntimeError>"
    ]


@pytest.mark.integration
def test_a_scheduler_process_sends_them_where_each_happens(scheduler_env: SchedulerEnv) -> None:
    env = scheduler_env
    proc = env.start("tests.proc.signalled", POLL_INTERVAL=0.2)
    wait_for(
        lambda: any(m.startswith("signal run_skipped signalled.slow") for m in env.marks()),
        15,
        "a skipped fire time of the slow job",
    )
    wait_for(
        lambda: any(
            m.startswith("signal run_finished signalled.fails failed") for m in env.marks()
        ),
        15,
        "a failed run",
    )
    assert proc.stop() == 0
    time.sleep(0.2)
    marks = env.marks()
    pid = f"pid={proc.pid}"
    assert marks[0] == f"signal scheduler_active {pid}"
    # A stop gives up the lease first, then lets the runs going end.
    lost = marks.index(f"signal lease_lost {pid}")
    assert not [m for m in marks[lost:] if m.startswith("signal run_started")]
    started = [m for m in marks if m.startswith("signal run_started signalled.fails")]
    finished = [m for m in marks if m.startswith("signal run_finished signalled.fails")]
    assert started and len(finished) >= len(started) - 1  # the last may have been cut by the stop
    assert all(m.endswith(pid) for m in marks)
