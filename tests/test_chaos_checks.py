"""The chaos soak's own judgement (scripts/chaos.py's Checker), on hand-made evidence.

A check that passes whatever happened would make the soak worthless; these
feed it the marks of a queue that moved and of one that did not.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.proc.harness import ROOT


@pytest.fixture(scope="module")
def chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos_script", ROOT / "scripts" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_script"] = module
    spec.loader.exec_module(module)
    return module


T0 = 1_000_000.0
STOP = T0 + 20


def checker(chaos: ModuleType, runs: list[tuple[float, float | None, int]], died: float | None):
    """A Checker over runs of one job (max_instances=1): (start, end or None, pid); pid 2
    is a process that ``died`` then (kill -9), pid 1 lives until the final stop."""
    found = object.__new__(chaos.Checker)
    found.soak = SimpleNamespace(t_stop=STOP)
    found.jobs = {"chaos.slow": SimpleNamespace(max_instances=1)}
    found.by_pid = {
        1: chaos.Life(1, 1, 1, "a.log", T0 - 5),
        2: chaos.Life(2, 1, 2, "b.log", T0 - 5, ended=died),
    }
    found.starts, found.ends = {}, {}
    for n, (start, end, pid) in enumerate(runs):
        key = ("chaos.slow", datetime.fromtimestamp(T0 + n / 1000, UTC))
        found.starts[key] = [chaos.Mark("start", "chaos.slow", key[1], pid, start, "ok")]
        if end is not None:
            found.ends[key] = [chaos.Mark("end", "chaos.slow", key[1], pid, end, "ok")]
    return found


def queued_at(t: float) -> dict[str, Any]:
    return {
        "job_id": "chaos.slow",
        "trigger": "manual",
        "status": "queued",
        "scheduled_at": datetime.fromtimestamp(t, UTC),
    }


def test_a_request_behind_runs_that_filled_the_slot_until_the_stop_waited_its_turn(
    chaos: ModuleType,
) -> None:
    runs = [(T0 + 1, T0 + 5.5, 1), (T0 + 5.7, T0 + 10.2, 1), (T0 + 10.4, T0 + 14.9, 1)]
    runs.append((T0 + 15.0, None, 1))  # still going at the final stop
    assert checker(chaos, runs, None).waited_its_turn(queued_at(T0 + 3))


def test_a_request_left_queued_while_the_slot_was_free_did_not(chaos: ModuleType) -> None:
    runs = [(T0 + 1, T0 + 5.5, 1), (T0 + 8.0, T0 + 12.5, 1), (T0 + 12.6, None, 1)]
    assert not checker(chaos, runs, None).waited_its_turn(queued_at(T0 + 3))


def test_a_free_slot_at_the_end_counts_too(chaos: ModuleType) -> None:
    runs = [(T0 + 1, T0 + 5.5, 1), (T0 + 5.6, T0 + 10.1, 1)]
    assert not checker(chaos, runs, None).waited_its_turn(queued_at(T0 + 3))


def test_a_run_whose_process_was_killed_frees_the_slot_when_it_died(chaos: ModuleType) -> None:
    # No end line: without the process's death it would seem to run until the stop.
    runs = [(T0 + 1, None, 2)]
    assert not checker(chaos, runs, T0 + 4).waited_its_turn(queued_at(T0 + 3))
    assert checker(chaos, runs, None).waited_its_turn(queued_at(T0 + 3))


def test_only_queued_requests_and_fire_times_can_be_excused(chaos: ModuleType) -> None:
    """A request, or a fire time waiting its turn (overlap="queue"), behind a run that
    holds the slot; never a running row, nor a next attempt (due at a time of its own)."""
    runs = [(T0 + 1, None, 1)]
    found = checker(chaos, runs, None)
    assert found.waited_its_turn(queued_at(T0 + 3))
    assert found.waited_its_turn({**queued_at(T0 + 3), "trigger": "schedule"})
    assert not found.waited_its_turn({**queued_at(T0 + 3), "status": "running"})
    assert not found.waited_its_turn({**queued_at(T0 + 3), "trigger": "retry"})


def retry_row(chaos: ModuleType, **values: Any) -> dict[str, Any]:
    row = {
        "id": 1,
        "job_id": "chaos.retry",
        "trigger": "schedule",
        "status": "failed",
        "scheduled_at": datetime.fromtimestamp(T0, UTC),
        "started_at": datetime.fromtimestamp(T0, UTC),
        "finished_at": datetime.fromtimestamp(T0 + 0.1, UTC),
        "pid": 1,
        "exception": "PlannedFailure: failed on purpose",
        "attempt": 1,
        "retry_of": None,
    }
    return {**row, **values}


def retry_findings(chaos: ModuleType, rows: list[dict[str, Any]]) -> list[str]:
    found = object.__new__(chaos.Checker)
    found.rows = rows
    found.jobs = {"chaos.retry": SimpleNamespace(retries=2, max_instances=1)}
    found.row_text = lambda row: f"row #{row['id']}"
    return [category for category, _ in found.retries()]


def test_each_failure_that_is_retried_has_exactly_one_next_attempt(chaos: ModuleType) -> None:
    at = datetime.fromtimestamp(T0 + 1, UTC)
    second = retry_row(
        chaos, id=2, trigger="retry", attempt=2, retry_of=1, scheduled_at=at, started_at=at
    )
    third = {**second, "id": 3, "attempt": 3, "status": "succeeded"}
    assert retry_findings(chaos, [retry_row(chaos), second, third]) == []
    # The last attempt failing has no next one: right.
    assert retry_findings(chaos, [retry_row(chaos), second, {**third, "status": "failed"}]) == []
    assert retry_findings(chaos, [retry_row(chaos)]) == ["a failure without its next attempt"]
    done = {**second, "status": "succeeded"}
    assert retry_findings(chaos, [retry_row(chaos), done, {**done, "id": 4}]) == [
        "an attempt filed twice"
    ]
    assert retry_findings(chaos, [retry_row(chaos, status="succeeded"), done]) == [
        "a next attempt of a success"
    ]
    early = {**second, "started_at": datetime.fromtimestamp(T0 + 0.5, UTC), "status": "succeeded"}
    assert retry_findings(chaos, [retry_row(chaos), early]) == [
        "an attempt started before it was due"
    ]
    # An interrupted attempt (its process died holding the failure) may have a next one.
    assert retry_findings(chaos, [retry_row(chaos, status="interrupted"), done]) == []
