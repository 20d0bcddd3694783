"""scheduler/incidents.py and scheduler/outbox.py: the history turned into incidents (one
open per kind and job, then resolved), and their notifications sent, retried, given up;
in process, on the test database."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from scheduler import alerts, outbox
from scheduler.incidents import Detector, Incidents, expected_interval
from scheduler.lease import Alone
from scheduler.models import Incident, JobRun, Notification, SchedulerInstance
from scheduler.registry import registry
from tests.helpers import spec

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Sink:
    """A notifier that keeps what it is given (or fails as told)."""

    name: str = "sink"
    fail: Exception | None = None
    got: list[alerts.Alert] = field(default_factory=list)

    def send(self, alert: alerts.Alert) -> None:
        if self.fail is not None:
            raise self.fail
        self.got.append(alert)


@pytest.fixture
def jobs(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    made = {
        "j.every": spec("j.every", schedule={"second": "0"}),  # every minute
        "j.third": spec("j.third", alert_after=3, schedule={"second": "0"}),
        "j.quiet": spec("j.quiet", alerts=False),
        "j.timed": spec("j.timed", timeout=10.0),
    }
    for job_id, declared in made.items():
        monkeypatch.setitem(registry, job_id, declared)
    return made


def detector(names: list[str] | None = None) -> Detector:
    found = Detector(Incidents(names if names is not None else ["sink"]), Alone("me"))
    found.took_over(None)
    return found


def finish(job_id: str, status: str, at: datetime, **fields: Any) -> JobRun:
    return JobRun.objects.create(
        job_id=job_id,
        status=status,
        trigger=fields.pop("trigger", "schedule"),
        scheduled_at=fields.pop("scheduled_at", at - timedelta(seconds=1)),
        started_at=at - timedelta(seconds=1),
        finished_at=at,
        exception=fields.pop("exception", "ValueError: no" if status != "succeeded" else ""),
        **fields,
    )


def incidents() -> list[tuple[str, str, int, bool]]:
    return [
        (i.kind, i.job_id, i.occurrences, i.is_open)
        for i in Incident.objects.order_by("opened_at", "id")
    ]


def test_a_failure_opens_one_incident_counted_again_then_a_success_resolves_it(jobs) -> None:
    found = detector()
    now = timezone.now()
    finish("j.every", "failed", now)
    found.run_pass(now)
    finish("j.every", "timed_out", now + timedelta(seconds=1))
    found.run_pass(now + timedelta(seconds=2))
    assert incidents() == [("failing", "j.every", 2, True)]
    assert Notification.objects.filter(state="opened").count() == 1  # one alert, not two
    ok = finish("j.every", "succeeded", now + timedelta(seconds=3))
    found.run_pass(now + timedelta(seconds=4))
    assert incidents() == [("failing", "j.every", 2, False)]
    incident = Incident.objects.get()
    assert incident.resolved_by == ok.pk
    assert incident.title == "Job j.every (j.every) failed once"
    assert "ValueError: no" in incident.detail
    assert list(Notification.objects.values_list("state", flat=True).order_by("id")) == [
        "opened",
        "resolved",
    ]


def test_alert_after_needs_that_many_failures_in_a_row_and_retried_attempts_do_not_count(
    jobs,
) -> None:
    found = detector()
    now = timezone.now()
    first = finish("j.third", "failed", now)
    # Attempt 1 was tried again: not the last word on its run.
    finish("j.third", "failed", now, attempt=2, retry_of=first.pk, trigger="retry")
    found.run_pass(now + timedelta(seconds=1))
    assert incidents() == []
    finish("j.third", "failed", now + timedelta(seconds=2), scheduled_at=now + timedelta(seconds=1))
    found.run_pass(now + timedelta(seconds=3))
    assert incidents() == []  # two runs failed (the first one's two attempts are one run)
    finish("j.third", "failed", now + timedelta(seconds=4), scheduled_at=now + timedelta(seconds=3))
    found.run_pass(now + timedelta(seconds=5))
    assert incidents() == [("failing", "j.third", 1, True)]
    assert Incident.objects.get().title == "Job j.third (j.third) failed 3 times in a row"


def test_missed_fire_times_open_one_incident_and_quiet_jobs_none(jobs) -> None:
    found = detector()
    now = timezone.now()
    for n in range(3):
        finish("j.every", "missed", now, scheduled_at=now - timedelta(minutes=n + 1))
        finish("j.quiet", "failed", now, scheduled_at=now - timedelta(minutes=n + 1))
    found.run_pass(now + timedelta(seconds=1))
    assert incidents() == [("missed", "j.every", 3, True)]


def test_a_run_past_its_timeout_is_stuck_until_it_ends(jobs) -> None:
    found = detector()
    now = timezone.now()
    run = JobRun.objects.create(
        job_id="j.timed",
        status="running",
        trigger="schedule",
        scheduled_at=now - timedelta(minutes=5),
        started_at=now - timedelta(minutes=5),
    )
    found.run_pass(now)
    assert incidents() == [("stuck", "j.timed", 1, True)]
    JobRun.objects.filter(pk=run.pk).update(status="interrupted", finished_at=now)
    found.run_pass(now + timedelta(seconds=1))
    assert [(kind, is_open) for kind, _, _, is_open in incidents()] == [
        ("stuck", False),
        ("failing", True),  # and the interrupted run is a failure
    ]


def test_no_success_within_the_expected_interval_plus_grace_is_overdue(jobs, settings) -> None:
    settings.SCHEDULER = {**settings.SCHEDULER, "ALERTS": {"OVERDUE_GRACE": 30}}
    found = detector()
    assert expected_interval(jobs["j.every"]) == 60
    start = found._active_since
    assert start is not None
    found.run_pass(start + timedelta(seconds=89))
    assert [i for i in incidents() if i[1] == "j.every"] == []
    found.run_pass(start + timedelta(seconds=91))
    assert ("overdue", "j.every", 1, True) in incidents()
    # Not counted again pass after pass; a success resolves it.
    found.run_pass(start + timedelta(seconds=100))
    assert ("overdue", "j.every", 1, True) in incidents()
    finish("j.every", "succeeded", start + timedelta(seconds=101))
    found.run_pass(start + timedelta(seconds=102))
    assert ("overdue", "j.every", 1, False) in incidents()
    # Counted from that success on: not overdue again before another interval and grace.
    found.run_pass(start + timedelta(seconds=101 + 89))
    assert [i for i in incidents() if i[1] == "j.every" and i[3]] == []


def test_a_standby_taking_over_from_a_dead_scheduler_opens_no_scheduler_then_resolves(
    jobs,
) -> None:
    now = timezone.now()
    common = {"version": "0", "started_at": now - timedelta(hours=1)}
    SchedulerInstance.objects.create(
        id="dead",
        hostname="web1",
        pid=42,
        role="active",
        heartbeat_at=now - timedelta(seconds=20),
        **common,
    )
    SchedulerInstance.objects.create(
        id="gone",
        hostname="web2",
        pid=43,
        role="stopped",
        heartbeat_at=now,
        stopped_at=now,
        **common,
    )
    found = Detector(Incidents(["sink"]), Alone("me"))
    found.took_over("gone")  # stopped cleanly: a hand-over
    assert incidents() == []
    found.took_over("dead")
    assert incidents() == [("no_scheduler", "", 1, True)]
    assert Incident.objects.get().title == "No active scheduler: web1:42 stopped heartbeating"
    found.run_pass(timezone.now())
    assert incidents() == [("no_scheduler", "", 1, False)]


def test_the_outbox_sends_each_change_once_with_the_alert(jobs) -> None:
    sink = Sink()
    box = outbox.Outbox([sink])
    found = detector()
    now = timezone.now()
    finish("j.every", "failed", now)
    found.run_pass(now)
    assert box.deliver_due() == 1
    assert box.deliver_due() == 0
    finish("j.every", "succeeded", now + timedelta(seconds=1))
    found.run_pass(now + timedelta(seconds=2))
    assert box.deliver_due(now + timedelta(seconds=2)) == 1
    opened, resolved = sink.got
    assert (opened.state, opened.kind, opened.job_id) == ("opened", "failing", "j.every")
    assert opened.summary == "[scheduler] FAILING: Job j.every (j.every) failed once"
    assert resolved.state == "resolved" and resolved.resolved_at is not None
    assert resolved.summary.startswith("[scheduler] RESOLVED: ")
    assert opened.url.endswith(f"/scheduler/incident/{opened.incident_id}/change/")


def test_a_failing_notifier_is_tried_again_later_and_given_up_saying_why(jobs) -> None:
    class Hostile(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    sink = Sink(fail=Hostile())
    box = outbox.Outbox([sink])
    found = detector()
    now = timezone.now()
    finish("j.every", "failed", now)
    found.run_pass(now)
    assert box.deliver_due() == 0
    note = Notification.objects.get()
    assert note.attempts == 1 and note.sent_at is None and note.given_up_at is None
    assert "str() of the exception raised RuntimeError" in note.last_error
    assert note.next_try_at > timezone.now() + timedelta(seconds=5)  # not at once again
    for _attempt in range(2, outbox.MAX_ATTEMPTS + 1):
        Notification.objects.update(next_try_at=timezone.now())
        box.deliver_due()
    note.refresh_from_db()
    assert note.attempts == outbox.MAX_ATTEMPTS and note.given_up_at is not None
    Notification.objects.update(next_try_at=timezone.now())
    assert box.deliver_due() == 0
    note.refresh_from_db()
    assert note.attempts == outbox.MAX_ATTEMPTS  # given up: not tried again


def test_a_notification_for_a_notifier_no_longer_configured_is_given_up(jobs) -> None:
    found = detector(["old-webhook"])
    now = timezone.now()
    finish("j.every", "failed", now)
    found.run_pass(now)
    outbox.Outbox([Sink()]).deliver_due()
    note = Notification.objects.get()
    assert note.given_up_at is not None
    assert "'old-webhook' is not configured any more" in note.last_error
