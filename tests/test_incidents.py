"""scheduler/incidents.py and scheduler/outbox.py: the history turned into incidents (one
open per kind and job, then resolved), and their notifications sent, retried, given up:
in process on the test database, then with real schedulers, schedulerstatus and a real
HTTP server receiving the webhooks."""

from __future__ import annotations

import json
import signal
import time
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
from tests.proc.harness import STARTED_LINE, parse_dt, wait_for

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
    assert Notification.objects.count() == 1  # three fire times, one alert


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
    found.run_pass(now + timedelta(seconds=1))  # still stuck: counted, not raised again
    assert incidents() == [("stuck", "j.timed", 2, True)]
    assert Notification.objects.filter(state="opened").count() == 1  # one alert
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


# -- end to end: real schedulers, schedulerstatus -----------------------------------------

ALERTING = "tests.proc.alerting"
FAST_ALERTS = {"POLL_INTERVAL": 0.2, "ALERTS": '{"INTERVAL": 1}'}


def incident_rows(env: Any, kind: str = "no_scheduler") -> list[dict[str, Any]]:
    rows = env.query("SELECT * FROM scheduler_incident WHERE kind = ? ORDER BY id", (kind,))
    for row in rows:
        for column in ("opened_at", "resolved_at", "last_seen_at"):
            row[column] = parse_dt(row[column])
    return rows


@pytest.mark.integration
def test_a_job_failing_three_times_raises_one_incident_and_its_success_resolves_it(
    scheduler_env: Any,
) -> None:
    env = scheduler_env
    proc = env.start(ALERTING, **FAST_ALERTS)
    wait_for(
        lambda: any(r["resolved_at"] for r in incident_rows(env, "failing")),
        20,
        "the incident resolved",
    )
    assert proc.stop() == 0
    (incident,) = incident_rows(env, "failing")
    assert (incident["kind"], incident["job_id"]) == ("failing", "alerting.flaky")
    assert (
        incident["title"]
        == "Fails three times, then succeeds. (alerting.flaky) failed 3 times in a row"
    )
    assert "ConnectionError: the partner API is down" in incident["detail"]
    runs = [r for r in env.runs("alerting.flaky") if r["status"] in ("failed", "succeeded")]
    third_failure = [r for r in runs if r["status"] == "failed"][2]
    first_success = next(r for r in runs if r["status"] == "succeeded")
    # Detected within a pass (INTERVAL 1 s) of the third failure's row.
    delay = (incident["opened_at"] - third_failure["finished_at"]).total_seconds()
    assert 0 <= delay < 2.5, delay
    assert incident["run_id"] == third_failure["id"]
    assert incident["resolved_by"] == first_success["id"]


@pytest.mark.integration
def test_killing_the_only_scheduler_is_found_by_schedulerstatus_and_by_a_standby(
    scheduler_env: Any,
) -> None:
    env = scheduler_env
    only = env.start(ALERTING, **FAST_ALERTS)
    only.kill()  # kill -9: it cannot say it stopped
    time.sleep(1)
    fast = {"LEASE_SECONDS": 1, "HEARTBEAT_INTERVAL": 0.5}
    checked = env.manage("schedulerstatus", modules=ALERTING, **fast)
    assert checked.returncode == 1
    assert "FAIL: no active scheduler" in checked.stdout
    assert "incident #1 opened; 0 alert(s) sent" in checked.stdout, checked.stdout
    again = env.manage("schedulerstatus", modules=ALERTING, **fast)
    assert "incident open already" in again.stdout  # one incident, not one per probe
    quiet = env.manage("schedulerstatus", "--no-alert", modules=ALERTING)
    assert "[" not in quiet.stdout.strip().splitlines()[-1]
    (found,) = incident_rows(env)
    assert (found["kind"], found["resolved_at"], found["occurrences"]) == ("no_scheduler", None, 2)

    # A scheduler that starts resolves it; one that dies under a standby is found by it.
    first = env.start(ALERTING, **FAST_ALERTS)
    wait_for(lambda: incident_rows(env)[0]["resolved_at"] is not None, 15, "the incident over")
    standby = env.start(ALERTING, wait=STARTED_LINE, **FAST_ALERTS)
    first.kill()
    standby.wait_active(30)
    wait_for(lambda: len(incident_rows(env)) == 2, 15, "the standby's incident")
    wait_for(lambda: incident_rows(env)[1]["resolved_at"] is not None, 15, "it resolved")
    assert standby.stop() == 0
    taken = incident_rows(env)[1]
    assert taken["kind"] == "no_scheduler"
    assert f":{first.pid} stopped heartbeating" in taken["title"]
    assert "took over" in taken["detail"] and "Resolved: " in taken["detail"]


@pytest.mark.integration
def test_a_real_scheduler_posts_each_incident_change_once_and_a_hanging_webhook_delays_no_run(
    scheduler_env: Any,
) -> None:
    """Two webhooks: one answers (it gets the opened and the resolved alert, once each),
    one never answers (its alerts wait out their timeout in the outbox thread, while the
    ticking job starts on time every second)."""
    from tests.servers import Recorder

    server = Recorder()
    try:
        notify = [
            {"webhook": server.url("/hooks/ok"), "format": "json", "timeout": 2},
            {"webhook": server.url("/hang/hooks"), "format": "slack", "timeout": 5},
        ]
        alerts_setting = json.dumps({"INTERVAL": 1, "NOTIFY": notify})
        env = scheduler_env
        proc = env.start(ALERTING, POLL_INTERVAL=0.2, ALERTS=alerts_setting)
        wait_for(lambda: len(server.matching("/hooks/ok")) >= 2, 25, "two alerts posted")
        time.sleep(2)
        assert proc.stop() == 0
        posted = [r.json() for r in server.matching("/hooks/ok")]
        assert [(p["kind"], p["state"]) for p in posted] == [
            ("failing", "opened"),
            ("failing", "resolved"),
        ]
        assert posted[0]["job_id"] == "alerting.flaky"
        assert posted[0]["summary"].startswith("[scheduler] FAILING: ")
        assert server.matching("/hang/hooks")  # it was tried (and waited on) meanwhile
        ticks = env.runs("alerting.tick")
        assert len(ticks) >= 5
        late = [(r["started_at"] - r["scheduled_at"]).total_seconds() for r in ticks[1:]]
        assert max(late) < 0.5, late
    finally:
        server.stop()


@pytest.mark.integration
def test_fire_times_missed_while_the_scheduler_was_frozen_raise_one_alert_soon(
    scheduler_env: Any,
) -> None:
    """The detection delay: from the moment the scheduler can record the missed fire
    times (it is thawed) to the webhook receiving the alert."""
    from tests.servers import Recorder

    server = Recorder()
    try:
        notify = [{"webhook": server.url("/hooks/ok"), "format": "json", "timeout": 2}]
        env = scheduler_env
        proc = env.start(
            ALERTING, POLL_INTERVAL=0.2, ALERTS=json.dumps({"INTERVAL": 1, "NOTIFY": notify})
        )
        time.sleep(1.5)
        proc.signal(signal.SIGSTOP)
        time.sleep(4)
        proc.signal(signal.SIGCONT)
        thawed = time.monotonic()

        def missed_alert() -> list[Any]:
            return [
                r
                for r in server.matching("/hooks/ok")
                if (r.json()["kind"], r.json()["job_id"], r.json()["state"])
                == ("missed", "alerting.brief", "opened")
            ]

        (alert,) = wait_for(missed_alert, 15, "the missed fire times' alert")
        delay = alert.at - thawed
        time.sleep(1.5)
        assert proc.stop() == 0
        assert len(missed_alert()) == 1  # one alert for several fire times (then its recovery)
        missed = env.runs("alerting.brief", status="missed")
        assert len(missed) >= 2
        (incident,) = incident_rows(env, "missed")[:1] or [None]
        assert incident is not None and incident["occurrences"] >= 1
        print(f"missed fire times to alert: {delay:.2f} s after the scheduler thawed")
        assert delay < 4.0, delay
    finally:
        server.stop()


def test_a_failure_and_a_later_success_in_one_pass_end_resolved_and_many_successes_cost_one_read(
    jobs,
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    found = detector()
    now = timezone.now()
    finish("j.every", "failed", now, scheduled_at=now - timedelta(seconds=3))
    finish("j.every", "succeeded", now + timedelta(seconds=1), scheduled_at=now)
    found.run_pass(now + timedelta(seconds=2))
    assert incidents() == [("failing", "j.every", 1, False)]
    # Successes are read grouped by job: a hundred cost what one does.
    for n in range(100):
        finish(
            "j.every",
            "succeeded",
            now + timedelta(seconds=3),
            scheduled_at=now + timedelta(seconds=n + 1),
        )
    with CaptureQueriesContext(connection) as read:
        found.run_pass(now + timedelta(seconds=4))
    assert len([q for q in read.captured_queries if "scheduler_jobrun" in q["sql"]]) <= 4
