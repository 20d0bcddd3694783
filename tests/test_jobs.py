"""The app's own job (scheduler/jobs.py): the history pruner, and ``manage.py prunehistory``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from scheduler.jobs import prune_history
from scheduler.models import JobRun
from scheduler.registry import autodiscover


def add_run(days_ago: float, status: str = "succeeded") -> JobRun:
    at = timezone.now() - timedelta(days=days_ago)
    return JobRun.objects.create(
        job_id="t.job",
        job_name="A job",
        status=status,
        trigger="schedule",
        scheduled_at=at,
        finished_at=None if status in ("running", "queued") else at,
    )


def test_the_pruner_is_a_job_of_every_project() -> None:
    spec = autodiscover()["scheduler.prune_history"]
    assert spec.func is prune_history
    assert spec.enabled  # HISTORY_DAYS is 30 by default


@pytest.mark.django_db
def test_prune_history_deletes_finished_runs_older_than_history_days(settings) -> None:
    settings.SCHEDULER = {**settings.SCHEDULER, "HISTORY_DAYS": 7}
    old = [add_run(8), add_run(30, "failed"), add_run(9, "missed")]
    kept = [add_run(6), add_run(0)]
    # Not finished: kept, however old (a run that is going, a request not taken yet).
    unfinished = [add_run(40, "running"), add_run(40, "queued")]
    prune_history()
    remaining = set(JobRun.objects.values_list("pk", flat=True))
    assert remaining == {run.pk for run in kept + unfinished}
    assert not remaining & {run.pk for run in old}


@pytest.mark.django_db
def test_prune_deletes_in_batches() -> None:
    for _ in range(25):
        add_run(10)
    assert JobRun.objects.prune(timezone.now() - timedelta(days=1), batch=10) == 25
    assert not JobRun.objects.exists()


@pytest.mark.django_db
def test_prune_history_keeps_everything_when_history_days_is_none(settings) -> None:
    settings.SCHEDULER = {**settings.SCHEDULER, "HISTORY_DAYS": None}
    run = add_run(1000)
    prune_history()
    assert JobRun.objects.filter(pk=run.pk).exists()


@pytest.mark.django_db
def test_prunehistory_command(settings, capsys) -> None:
    settings.SCHEDULER = {**settings.SCHEDULER, "HISTORY_DAYS": 30}
    add_run(40)
    add_run(3)
    call_command("prunehistory", "--days", "2")
    assert "Deleted 2 finished run(s) older than 2 days." in capsys.readouterr().out
    assert not JobRun.objects.exists()
    add_run(40)
    call_command("prunehistory")
    assert "Deleted 1 finished run(s) older than 30 days." in capsys.readouterr().out
    with pytest.raises(CommandError, match="--days must be at least 1, not 0"):
        call_command("prunehistory", "--days", "0")
