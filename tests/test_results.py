"""scheduler/results.py: the results writer, in process, on the test database."""

from __future__ import annotations

import pytest

from scheduler.results import ResultWriter
from scheduler.runner import Runner
from tests.helpers import claimed, row, runner


@pytest.mark.django_db(transaction=True)
def test_results_written_by_the_writer_thread_are_all_there_after_it_stops() -> None:
    runs = [claimed(f"t.job{i}") for i in range(5)]
    writer = ResultWriter()
    threaded = Runner(results=writer)
    writer.start()
    try:
        assert writer._thread is not None
        for run in runs:
            threaded.execute(run, lambda: print("done"))
        first = row(runs[0])
    finally:
        writer.stop()
    assert writer._thread is None
    # Handed over, then written: a first result at once, the ones after it together.
    for run in runs:
        stored = row(run)
        assert (stored.status, stored.output) == ("succeeded", "done\n")
        assert stored.duration is not None and stored.finished_at >= stored.started_at
    assert first.status in ("running", "succeeded")
    # Without the writer thread a result is written before execute returns.
    late = claimed("t.late")
    runner.execute(late, lambda: None)
    assert row(late).status == "succeeded"
