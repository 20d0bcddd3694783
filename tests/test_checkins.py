"""scheduler/checkins.py: Healthchecks-style pings and Sentry Crons check-ins, sent to a
real HTTP server (tests/servers.py) through urllib and through sentry_sdk's own HTTP
transport; and from a real runapscheduler (tests/proc/pinged.py)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sentry_sdk

from scheduler import checkins, crontab, signals
from scheduler.checkins import CheckIns, monitor_config, monitor_slug, ping_address, run_uuid
from scheduler.models import JobRun
from scheduler.registry import JobSpec
from tests.helpers import spec
from tests.proc.harness import SchedulerEnv, wait_for
from tests.servers import Recorder, Request, refused_url


def cron_spec(job_id: str = "t.cron", **changes: Any) -> JobSpec:
    return spec(job_id, **{"misfire_grace_time": 60, "timeout": 30.0, **changes})


def a_run(pk: int, job_id: str, status: str = "running", **fields: Any) -> JobRun:
    """A run row as the signals carry it (not saved: the receivers read no database)."""
    return JobRun(pk=pk, job_id=job_id, job_name=job_id, status=status, **fields)


def start_and_end(run_id: int, job_id: str, status: str, **fields: Any) -> None:
    signals.started(None, a_run(run_id, job_id))
    signals.written(None, [a_run(run_id, job_id, status, **fields)])


@pytest.fixture
def connected() -> Iterator[list[CheckIns]]:
    """CheckIns made by a test, connected to the signals; disconnected and stopped after."""
    made: list[CheckIns] = []
    yield made
    for item in made:
        checkins.disconnect(item)
        item.stop(time.monotonic() + 2)


def checkins_for(connected: list[CheckIns], *specs: JobSpec, **options: Any) -> CheckIns:
    sender = CheckIns(jobs={s.id: s for s in specs}, **{"sentry": False, **options})
    checkins.connect(sender)
    connected.append(sender)
    sender.start()
    return sender


def rid(request: Request) -> str:
    return parse_qs(urlsplit(request.path).query)["rid"][0]


def route(request: Request) -> str:
    return urlsplit(request.path).path


# -- what is sent where ------------------------------------------------------------------------


def test_ping_addresses_keep_the_query_and_add_the_run_id() -> None:
    rid_ = run_uuid("a.job", 7)
    assert rid_ == run_uuid("a.job", 7) != run_uuid("a.job", 8)  # the same in every process
    assert ping_address("https://hc-ping.com/abc/", "/start", rid_) == (
        f"https://hc-ping.com/abc/start?rid={rid_}"
    )
    assert ping_address("https://hc.example/ping/key/slug?create=1", "/fail", rid_) == (
        f"https://hc.example/ping/key/slug/fail?create=1&rid={rid_}"
    )


def test_monitor_slugs_are_slug_safe_short_and_stable() -> None:
    assert monitor_slug("myapp.jobs.Send Report") == "myapp-jobs-send-report"
    assert monitor_slug("reports_daily-1") == "reports_daily-1"
    long_a = "myproject.some.deeply.nested.module.jobs.refresh_materialized_view_a"
    long_b = long_a[:-1] + "b"
    assert len(monitor_slug(long_a)) <= 50 and monitor_slug(long_a) == monitor_slug(long_a)
    assert monitor_slug(long_a).startswith("myproject-some-deeply-nested-module-jobs-")
    assert monitor_slug(long_a) != monitor_slug(long_b)
    assert monitor_slug("ÄÖ") == "job"


def test_the_monitor_config_says_the_crontab_zone_margin_and_runtime() -> None:
    job = cron_spec(
        kind="cron",
        schedule={"crontab": "0 3 * * 1-5"},
        timezone="Europe/Paris",
        misfire_grace_time=600,
        jitter=30,
        timeout=90.0,
    )
    assert monitor_config(job) == {
        "schedule": {"type": "crontab", "value": "0 3 * * 1-5"},
        "timezone": "Europe/Paris",
        "checkin_margin": 11,  # 600 s of grace and 30 s of jitter, in whole minutes
        "max_runtime": 2,
    }
    daily = monitor_config(cron_spec(schedule={"crontab": "@daily"}, timeout=None))
    assert daily is not None
    assert daily["schedule"]["value"] == "0 0 * * *"
    assert daily["max_runtime"] == 40_320  # no timeout: as long as Sentry allows


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"hour": "3"}, "0 3 * * *"),
        ({"minute": "*/5"}, "*/5 * * * *"),
        ({"second": "0"}, "* * * * *"),
        ({"day_of_week": "mon-fri", "hour": "9-17/2"}, "0 9-17/2 * * mon,tue,wed,thu,fri"),
        # APScheduler counts weekdays from Monday (0), cron from Sunday.
        ({"day_of_week": "5-6,0", "minute": "30"}, "30 * * * sun,mon,sat"),
        ({"day_of_week": "*/3", "hour": "6"}, "0 6 * * sun,mon,thu"),
        ({"month": "jan-mar", "day": "1,15", "hour": "12"}, "0 12 1,15 1-3 *"),
        ({"day": "10-20/5", "hour": "1"}, "0 1 10-20/5 * *"),
        # What a crontab cannot say: not monitored.
        ({"second": "*"}, None),
        ({"second": "30"}, None),
        ({"day": "last"}, None),
        ({"day": "1st mon"}, None),
        ({"year": "2031"}, None),
        ({"week": "3"}, None),
        ({"day": "1", "day_of_week": "mon"}, None),  # both must match; cron: either
    ],
)
def test_cron_fields_become_the_crontab_that_fires_at_the_same_times(
    fields: dict[str, str], expected: str | None
) -> None:
    job = cron_spec(schedule=fields, timezone="America/New_York")
    config = monitor_config(job)
    if expected is None:
        assert config is None
        return
    assert config is not None and config["schedule"] == {"type": "crontab", "value": expected}
    # Not only the text: this crontab fires when the job does, over 400 fire times.
    ours, theirs = job.make_trigger(), crontab.from_crontab(expected, job.make_trigger().timezone)
    a = b = None
    now = datetime(2030, 1, 1, tzinfo=UTC)
    for _ in range(400):
        a = ours.get_next_fire_time(a, now if a is None else a + timedelta(seconds=1))
        b = theirs.get_next_fire_time(b, now if b is None else b + timedelta(seconds=1))
        assert a == b
        now = a


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"minutes": 90}, {"type": "interval", "value": 90, "unit": "minute"}),
        ({"hours": 2}, {"type": "interval", "value": 2, "unit": "hour"}),
        ({"hours": 1, "minutes": 30}, {"type": "interval", "value": 90, "unit": "minute"}),
        ({"days": 7}, {"type": "interval", "value": 1, "unit": "week"}),
        ({"days": 3}, {"type": "interval", "value": 3, "unit": "day"}),
        ({"seconds": 30}, None),
        ({"seconds": 90}, None),
    ],
)
def test_intervals_become_sentry_intervals_in_whole_units(
    schedule: dict[str, int], expected: dict[str, Any] | None
) -> None:
    config = monitor_config(cron_spec(kind="interval", schedule=schedule))
    assert (config and config["schedule"]) == expected


def test_a_job_without_a_schedule_is_not_monitored_by_sentry() -> None:
    assert monitor_config(cron_spec(kind="on_demand", schedule={})) is None


def test_check_sentry_says_what_is_missing(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings.SCHEDULER = {**settings.SCHEDULER, "ALERTS": {"SENTRY_CRONS": True}}
    assert checkins.check_sentry() is None  # installed
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # as if it were not
    message = checkins.check_sentry()
    assert message is not None and "sentry_sdk is not installed" in message
    assert 'pip install "django-scheduler-app[sentry]"' in message
    settings.SCHEDULER = {**settings.SCHEDULER, "ALERTS": {"SENTRY_CRONS": False}}
    assert checkins.check_sentry() is None


# -- pings, in process ---------------------------------------------------------------------------


def test_a_run_pings_start_then_success_with_the_same_run_id(
    http: Recorder, connected: list[CheckIns]
) -> None:
    job = cron_spec("t.ok", ping_url=http.url("/ping/abc"))
    checkins_for(connected, job)
    start_and_end(41, "t.ok", "succeeded", duration=0.2, output="done")
    wait_for(lambda: len(http.requests) == 2, 5, "two pings")
    start, end = http.requests
    assert (start.method, route(start)) == ("GET", "/ping/abc/start")
    assert (end.method, route(end), end.body) == ("GET", "/ping/abc", b"")
    assert rid(start) == rid(end) == str(run_uuid("t.ok", 41))


@pytest.mark.parametrize("status", ["failed", "timed_out", "interrupted"])
def test_a_failed_run_pings_fail_with_what_it_raised_and_the_end_of_its_output(
    http: Recorder, connected: list[CheckIns], status: str
) -> None:
    job = cron_spec("t.fails", ping_url=http.url("/ping/abc"))
    checkins_for(connected, job)
    start_and_end(
        42,
        "t.fails",
        status,
        exception="ValueError: no\x00 data \udcff",
        traceback="Traceback (most recent call last):\n  ...\nValueError: no data",
        output="o" * 1_000_000 + "the last line",
    )
    wait_for(lambda: len(http.requests) == 2, 5, "two pings")
    end = http.requests[1]
    assert (end.method, route(end)) == ("POST", "/ping/abc/fail")
    assert end.headers["Content-Type"] == "text/plain; charset=utf-8"
    body = end.body.decode("utf-8")
    assert body.startswith(f"Run #42 of t.fails: {status}\n\nValueError: no\x00 data \\udcff")
    assert "Traceback (most recent call last)" in body
    assert body.endswith("the last line") and len(end.body) <= 10_240


def test_missed_and_skipped_fire_times_send_nothing(
    http: Recorder, connected: list[CheckIns]
) -> None:
    job = cron_spec("t.missed", ping_url=http.url("/ping/abc"))
    checkins_for(connected, job)
    # Not from the schedule: run_finished carries them (manual and code runs can be missed).
    signals.written(None, [a_run(50, "t.missed", "missed", trigger="manual")])
    signals.written(None, [a_run(51, "t.missed", "skipped", trigger="code")])
    start_and_end(52, "t.missed", "succeeded")  # then a run that happened
    wait_for(lambda: len(http.requests) == 2, 5, "the pings of the run that happened")
    time.sleep(0.2)
    assert [rid(r) for r in http.requests] == [str(run_uuid("t.missed", 52))] * 2


def test_a_failing_ping_is_tried_again_then_given_up_and_a_4xx_is_not_retried(
    http: Recorder, connected: list[CheckIns], caplog: pytest.LogCaptureFixture
) -> None:
    # Another host name for each (the log says each host's trouble once a minute).
    flaky = cron_spec("t.503", ping_url=f"http://localhost:{http.port}/status/503/x")
    gone = cron_spec("t.404", ping_url=http.url("/status/404/y"))
    sender = checkins_for(connected, flaky, gone, backoff=(0.1, 0.2))
    with caplog.at_level(logging.WARNING, logger="scheduler.checkins"):
        signals.written(None, [a_run(60, "t.503", "succeeded"), a_run(61, "t.404", "succeeded")])
        wait_for(lambda: sender.given_up == 2, 5, "both pings given up")
    assert len(http.matching("/status/503/")) == 3  # 3 tries
    assert len(http.matching("/status/404/")) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        f"the ping of job t.503 to localhost:{http.port}" in m
        and "after 3 tries" in m
        and "503" in m
        for m in messages
    )
    # The log shows the host, never the ping URL itself (whoever has it can ping).
    assert not any("/status/503/x" in m for m in messages)


def test_a_start_retried_after_its_end_was_sent_is_dropped(
    http: Recorder, connected: list[CheckIns]
) -> None:
    job = cron_spec("t.order", ping_url=http.url("/startfails/z"))
    checkins_for(connected, job, backoff=(0.3, 0.3))
    start_and_end(70, "t.order", "succeeded")
    wait_for(lambda: len(http.requests) >= 2, 5, "the start and the end")
    time.sleep(0.8)  # past both retries of the start
    assert [route(r) for r in http.requests] == ["/startfails/z/start", "/startfails/z"]


def test_a_ping_server_that_is_down_never_delays_the_signal(connected: list[CheckIns]) -> None:
    down = cron_spec("t.down", ping_url=refused_url("/ping"))
    sender = checkins_for(connected, down, backoff=(0.05,))
    started = time.perf_counter()
    for pk in range(200):
        start_and_end(pk, "t.down", "failed", exception="E", output="x" * 60_000)
    per_run = (time.perf_counter() - started) / 200
    assert per_run < 0.005, f"{per_run * 1000:.1f} ms per run"
    wait_for(lambda: sender.pending() == 0, 10, "every ping tried")
    # Every end given up; each start was dropped once its end had gone (not sent late).
    assert sender.given_up == 200


def test_a_full_queue_drops_the_oldest_and_says_so_once(
    http: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    job = cron_spec("t.full", ping_url=http.url("/ping"))
    sender = CheckIns(jobs={job.id: job}, sentry=False, maxsize=5)  # not started yet
    with caplog.at_level(logging.WARNING, logger="scheduler.checkins"):
        for pk in range(8):
            sender.run_finished(run=a_run(pk, "t.full", "succeeded"))
    assert sender.pending() == 5 and sender.dropped == 3
    full = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(full) == 1
    sender.start()
    sender.stop(time.monotonic() + 5)
    # The newest five went out; the three oldest were dropped.
    assert sorted(rid(r) for r in http.requests) == sorted(
        str(run_uuid("t.full", pk)) for pk in range(3, 8)
    )


def test_stop_returns_by_its_deadline_while_a_ping_server_hangs(http: Recorder) -> None:
    job = cron_spec("t.hang", ping_url=http.url("/hang/p"))
    sender = CheckIns(jobs={job.id: job}, sentry=False, timeout=30)
    sender.start()
    for pk in range(5):
        sender.run_finished(run=a_run(pk, "t.hang", "succeeded"))
    wait_for(lambda: http.requests, 5, "the first ping")
    started = time.monotonic()
    sender.stop(started + 0.5)
    assert time.monotonic() - started < 1.0


# -- Sentry Crons, through sentry_sdk's real transport ------------------------------------------


def envelope_items(body: bytes) -> list[tuple[dict[str, Any], Any]]:
    """The (item header, payload) pairs of a Sentry envelope."""
    lines = body.split(b"\n")
    items, i = [], 1  # line 0: the envelope's header
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        header = json.loads(lines[i])
        payload = lines[i + 1]
        items.append((header, json.loads(payload) if payload.strip() else None))
        i += 2
    return items


@pytest.fixture
def sentry(http: Recorder) -> Iterator[Recorder]:
    sentry_sdk.init(
        dsn=f"http://public@127.0.0.1:{http.port}/1",
        default_integrations=False,
        auto_enabling_integrations=False,
        environment="tests",
    )
    try:
        yield http
    finally:
        sentry_sdk.get_client().close(timeout=2)
        sentry_sdk.get_global_scope().set_client(None)


def test_sentry_check_ins_pair_each_run_with_its_monitor_config(
    sentry: Recorder, connected: list[CheckIns]
) -> None:
    nightly = cron_spec(
        "myapp.jobs.Nightly", schedule={"crontab": "0 3 * * *"}, timezone="Europe/Paris"
    )
    every = cron_spec("myapp.jobs.every", kind="interval", schedule={"minutes": 15})
    seconds = cron_spec("myapp.jobs.seconds", schedule={"second": "*/10"})
    sender = checkins_for(connected, nightly, every, seconds, sentry=True)
    assert sender.sentry
    start_and_end(81, nightly.id, "succeeded", duration=1.25)
    start_and_end(82, every.id, "failed", duration=0.5, exception="ValueError: no")
    start_and_end(83, seconds.id, "succeeded", duration=0.1)  # not monitored
    wait_for(lambda: sender.pending() == 0, 5, "the check-ins handed to sentry_sdk")
    assert sentry_sdk.flush(timeout=5) is None
    wait_for(lambda: len(sentry.matching("/api/1/envelope/")) >= 4, 5, "4 envelopes")
    found = [
        payload
        for request in sentry.matching("/api/1/envelope/")
        for header, payload in envelope_items(request.body)
        if header.get("type") == "check_in"
    ]
    by_slug: dict[str, list[dict[str, Any]]] = {}
    for payload in found:
        by_slug.setdefault(payload["monitor_slug"], []).append(payload)
    assert sorted(by_slug) == ["myapp-jobs-every", "myapp-jobs-nightly"]
    start, end = by_slug["myapp-jobs-nightly"]
    assert (start["status"], end["status"]) == ("in_progress", "ok")
    assert start["check_in_id"] == end["check_in_id"] == run_uuid(nightly.id, 81).hex
    assert end["duration"] == 1.25 and start["duration"] is None
    assert end["environment"] == "tests"
    assert start["monitor_config"] == {
        "schedule": {"type": "crontab", "value": "0 3 * * *"},
        "timezone": "Europe/Paris",
        "checkin_margin": 1,
        "max_runtime": 1,
    }
    start, end = by_slug["myapp-jobs-every"]
    assert (start["status"], end["status"]) == ("in_progress", "error")
    assert start["check_in_id"] == end["check_in_id"]
    assert end["monitor_config"]["schedule"] == {"type": "interval", "value": 15, "unit": "minute"}


def test_without_sentry_initialised_nothing_is_sent_and_it_is_said_once(
    http: Recorder, connected: list[CheckIns], caplog: pytest.LogCaptureFixture
) -> None:
    assert not sentry_sdk.is_initialized()
    job = cron_spec("t.sentry", schedule={"crontab": "* * * * *"})
    sender = checkins_for(connected, job, sentry=True)
    with caplog.at_level(logging.WARNING, logger="scheduler.checkins"):
        for pk in range(3):
            start_and_end(pk, job.id, "succeeded")
        wait_for(lambda: sender.pending() == 0, 5, "the check-ins handled")
        time.sleep(0.1)
    said = [r for r in caplog.records if "sentry_sdk is not initialised" in r.getMessage()]
    assert len(said) == 1
    assert http.requests == []


# -- end to end: a real runapscheduler --------------------------------------------------------


@pytest.mark.integration
def test_a_scheduler_pings_each_run_start_success_and_failure(
    scheduler_env: SchedulerEnv, http: Recorder
) -> None:
    env = scheduler_env
    proc = env.start(
        "tests.proc.pinged",
        PROC_PING_URL=http.url("/ping"),
        PROC_SLOW_PING_URL=http.url("/ping"),
    )
    wait_for(lambda: len(http.matching("/ping/fails/fail")) >= 2, 15, "two failure pings")
    assert proc.stop() == 0
    runs = {row["id"]: row for row in env.runs()}
    for job, end_route in (("ok", "/ping/ok"), ("fails", "/ping/fails/fail")):
        ends = [r for r in http.requests if route(r) == end_route]
        starts = {rid(r) for r in http.requests if route(r) == f"/ping/{job}/start"}
        assert ends
        for end in ends:
            # Each end pairs with its start, and is the run's own id.
            assert rid(end) in starts
            [run_id] = [
                pk for pk, row in runs.items() if str(run_uuid(row["job_id"], pk)) == rid(end)
            ]
            assert runs[run_id]["job_id"] == f"pinged.{job}"
            expected = "succeeded" if job == "ok" else "failed"
            assert runs[run_id]["status"] == expected
    fail = http.matching("/ping/fails/fail")[0]
    assert fail.method == "POST"
    body = fail.body.decode()
    assert "tests.proc.pinged.Unprintable: <str() of the exception raised RuntimeError>" in body
    assert "about to fail" in body  # the end of its output


@pytest.mark.integration
def test_a_ping_server_down_or_hanging_does_not_delay_runs(
    scheduler_env: SchedulerEnv, http: Recorder
) -> None:
    env = scheduler_env
    proc = env.start(
        "tests.proc.pinged",
        PROC_PING_URL=refused_url(),
        PROC_SLOW_PING_URL=http.url("/hang"),
    )
    wait_for(lambda: http.matching("/hang/slow/start"), 10, "a ping to the server that hangs")
    time.sleep(3)
    assert proc.stop() == 0
    runs = [r for r in env.runs() if r["job_id"].startswith("pinged.") and r["started_at"]]
    assert len(runs) >= 9
    late = [(r["job_id"], (r["started_at"] - r["scheduled_at"]).total_seconds()) for r in runs]
    assert max(seconds for _, seconds in late) < 0.5, late
    assert max(r["duration"] or 0 for r in runs) < 0.5
    # Meanwhile the check-in thread was stuck on the server that hangs: one request at a time.
    assert len(http.matching("/hang/")) <= 2
