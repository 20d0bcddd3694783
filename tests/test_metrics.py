"""The Prometheus metrics: what they say about the rows, who may read them, and a real
Prometheus server scraping a real runserver while a real scheduler runs jobs."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.test.utils import override_settings
from django_apscheduler.models import DjangoJob
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from scheduler import metrics
from scheduler.models import Incident, Job, JobRun, Lease, SchedulerInstance
from tests.proc.harness import PYTHON, ROOT, SchedulerEnv, db_text, parse_dt, wait_for
from tests.proc.pg import free_port

URL = "/scheduler/metrics"
TOKEN = "metrics-token-for-tests-only-0123456789"
PROMETHEUS = Path(os.environ.get("SCHEDULER_TEST_PROMETHEUS", "/usr/bin/prometheus"))
PROMTOOL = PROMETHEUS.with_name("promtool")
ALERTS = ROOT / "docs" / "prometheus-alerts.yml"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
# A moment in the middle of a UTC day: the period counted is that day, from 00:00.
T = datetime(2024, 5, 6, 12, 0, 0, tzinfo=UTC)
DAY = datetime(2024, 5, 6, tzinfo=UTC)


# Helpers -----------------------------------------------------------------------


def parse(text: str | bytes) -> dict[str, Any]:
    """The exposition, parsed by prometheus_client's own parser: name -> family."""
    if isinstance(text, bytes):
        text = text.decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def samples(family: Any, name: str | None = None, **labels: str) -> list[Sample]:
    return [
        s
        for s in family.samples
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def value(family: Any, name: str | None = None, **labels: str) -> float:
    found = samples(family, name, **labels)
    assert len(found) == 1, f"{name or family.name} {labels}: {found}"
    return found[0].value


def by_label(family: Any, label: str, name: str | None = None) -> dict[str, float]:
    return {s.labels[label]: s.value for s in samples(family, name)}


def make_job(job_id: str, **fields: Any) -> Job:
    values: dict[str, Any] = {
        "name": job_id,
        "func": "tests.jobs.f",
        "kind": "cron",
        "schedule": "minute=*",
        "timezone": "UTC",
        "options": {},
        "fingerprint": "x",
        "synced_at": T,
    }
    values.update(fields)
    return Job.objects.create(id=job_id, **values)


def make_run(job_id: str, status: str, finished: datetime | None, **fields: Any) -> JobRun:
    """A run that finished at ``finished``, scheduled a second before it started."""
    duration = fields.pop("duration", 0.5)
    late = fields.pop("late", 0.002)
    trigger = fields.pop("trigger", JobRun.Trigger.SCHEDULE)
    end = finished or T
    started = end - timedelta(seconds=duration or 0)
    scheduled = fields.pop("scheduled_at", started - timedelta(seconds=late))
    return JobRun.objects.create(
        job_id=job_id,
        job_name=job_id,
        status=status,
        trigger=trigger,
        scheduled_at=scheduled,
        started_at=fields.pop("started_at", started),
        finished_at=finished,
        duration=duration,
        **fields,
    )


def make_active_scheduler(now: datetime) -> None:
    SchedulerInstance.objects.create(
        id="a" * 32,
        hostname="sched1",
        pid=99,
        version="0.1.0",
        role=SchedulerInstance.Role.ACTIVE,
        started_at=now - timedelta(hours=1),
        heartbeat_at=now - timedelta(seconds=2),
    )
    Lease.objects.create(
        name="scheduler",
        holder="a" * 32,
        acquired_at=now - timedelta(hours=1),
        expires_at=now + timedelta(seconds=10),
    )


# What the metrics say ------------------------------------------------------------


@pytest.fixture
def history(db: None) -> None:
    """Three jobs in the catalog and a history of runs around the day of T."""
    make_job("a", run_options={"expected_every": 3600.0})
    make_job("b", paused=True)
    make_job("c")
    # Job a, today: two successes, a failure, a missed fire time, a timed-out run.
    make_run("a", "succeeded", T - timedelta(hours=2), duration=0.003, late=0.0005)
    make_run("a", "succeeded", T - timedelta(hours=1), duration=2.0, late=0.2)
    make_run("a", "failed", T - timedelta(minutes=30), duration=7.0, late=3.0)
    make_run("a", "missed", T - timedelta(minutes=20), duration=None, started_at=None)
    make_run("a", "timed_out", T - timedelta(minutes=10), duration=4000.0, late=120.0)
    # Started 5 ms early (a fire time claimed ahead): on time, counted as 0.
    make_run("a", "succeeded", T - timedelta(minutes=5), duration=0.01, late=-0.005)
    # A manual run of a: counted, with a duration but no lateness.
    make_run("a", "failed", T - timedelta(minutes=4), trigger="manual", duration=0.2)
    # Yesterday: neither counted nor in the histograms; c's last success.
    make_run("a", "failed", DAY - timedelta(minutes=1))
    make_run("c", "succeeded", DAY - timedelta(hours=5))
    # A job no longer in the catalog, today: its history still counts.
    make_run("gone", "succeeded", T - timedelta(hours=3), duration=0.05)
    # In flight and waiting.
    make_run(
        "b", "running", None, trigger="manual", started_at=T - timedelta(minutes=7), duration=None
    )
    make_run(
        "b", "running", None, trigger="manual", started_at=T - timedelta(minutes=1), duration=None
    )
    make_run("c", "queued", None, trigger="code", started_at=None, duration=None)
    make_run("c", "queued", None, trigger="manual", started_at=None, duration=None)
    DjangoJob.objects.create(id="a", next_run_time=T + timedelta(minutes=1), job_state=b"")
    DjangoJob.objects.create(id="b", next_run_time=None, job_state=b"")
    Incident.objects.create(
        kind="failing", job_id="a", title="a fails", opened_at=T, last_seen_at=T
    )
    Incident.objects.create(
        kind="failing", job_id="c", title="c failed", opened_at=T, last_seen_at=T, resolved_at=T
    )
    Incident.objects.create(kind="stuck", job_id="b", title="b stuck", opened_at=T, last_seen_at=T)


def test_runs_total_counts_the_days_finished_runs_by_job_and_status(history: None) -> None:
    families = parse(metrics.exposition(T))
    runs = families["scheduler_runs"]
    assert runs.type == "counter"
    assert "since 00:00 UTC" in runs.documentation
    counted = {
        (s.labels["job_id"], s.labels["status"]): s.value
        for s in runs.samples
        if s.name == "scheduler_runs_total"
    }
    nonzero = {key: n for key, n in counted.items() if n}
    assert nonzero == {
        ("a", "succeeded"): 3,
        ("a", "failed"): 2,
        ("a", "missed"): 1,
        ("a", "timed_out"): 1,
        ("gone", "succeeded"): 1,
    }
    # Every final status of every catalog job is there, at 0 before its first run: an
    # alert on increase() needs the series before the first failure.
    for job_id in ("a", "b", "c"):
        for status in JobRun.FINAL:
            assert (job_id, status) in counted
    assert not any(status in ("running", "queued") for _, status in counted)


def test_histograms_bucket_the_days_durations_and_lateness(history: None) -> None:
    families = parse(metrics.exposition(T))
    duration = families["scheduler_run_duration_seconds"]
    assert duration.type == "histogram"
    buckets = {
        s.labels["le"]: s.value
        for s in samples(duration, "scheduler_run_duration_seconds_bucket", job_id="a")
    }
    # a's durations today: 0.003, 2.0, 7.0, 4000.0, 0.01, 0.2 (the missed run has none).
    assert buckets["0.005"] == 1
    assert buckets["0.025"] == 2
    assert buckets["0.5"] == 3
    assert buckets["5.0"] == 4
    assert buckets["10.0"] == 5
    assert buckets["3600.0"] == 5
    assert buckets["+Inf"] == 6
    assert value(duration, "scheduler_run_duration_seconds_count", job_id="a") == 6
    assert value(duration, "scheduler_run_duration_seconds_sum", job_id="a") == pytest.approx(
        0.003 + 2.0 + 7.0 + 4000.0 + 0.01 + 0.2
    )
    assert set(by_label(duration, "job_id", "scheduler_run_duration_seconds_count")) == {
        "a",
        "gone",
    }

    lateness = families["scheduler_run_lateness_seconds"]
    assert lateness.type == "histogram"
    late = {
        s.labels["le"]: s.value
        for s in samples(lateness, "scheduler_run_lateness_seconds_bucket", job_id="a")
    }
    # a's scheduled runs that started: 0.0005, 0.2, 3.0, 120.0 late, and 5 ms early.
    assert late["0.001"] == 2
    assert late["0.5"] == 3
    assert late["5.0"] == 4
    assert late["60.0"] == 4
    assert late["+Inf"] == 5
    assert value(lateness, "scheduler_run_lateness_seconds_sum", job_id="a") == pytest.approx(
        0.0005 + 0.2 + 3.0 + 120.0, abs=0.001
    )


def test_job_gauges(history: None) -> None:
    families = parse(metrics.exposition(T))
    last = by_label(families["scheduler_job_last_success_timestamp_seconds"], "job_id")
    assert last == {
        "a": (T - timedelta(minutes=5)).timestamp(),
        "c": (DAY - timedelta(hours=5)).timestamp(),
        "gone": (T - timedelta(hours=3)).timestamp(),
    }
    assert by_label(families["scheduler_job_next_fire_timestamp_seconds"], "job_id") == {
        "a": (T + timedelta(minutes=1)).timestamp()
    }
    assert by_label(families["scheduler_job_enabled"], "job_id") == {"a": 1, "b": 0, "c": 1}
    assert by_label(families["scheduler_job_expected_interval_seconds"], "job_id") == {"a": 3600.0}
    assert by_label(families["scheduler_runs_in_flight"], "job_id") == {"a": 0, "b": 2, "c": 0}
    assert by_label(families["scheduler_run_oldest_start_timestamp_seconds"], "job_id") == {
        "b": (T - timedelta(minutes=7)).timestamp()
    }
    queued = by_label(families["scheduler_runs_queued"], "kind")
    assert queued == {
        "schedule": 0,
        "manual": 1,
        "retry": 0,
        "code": 1,
        "task": 0,
        "worker": 0,
    }
    assert by_label(families["scheduler_incidents_open"], "kind") == {
        "failing": 1,
        "missed": 0,
        "overdue": 0,
        "stuck": 1,
        "no_scheduler": 0,
    }
    for name in families:
        assert families[name].documentation, f"{name} has no HELP"
    gauges = [name for name, family in families.items() if family.type == "gauge"]
    assert "scheduler_job_last_success_timestamp_seconds" in gauges


def test_active_scheduler_and_heartbeat_age(db: None) -> None:
    families = parse(metrics.exposition())
    assert value(families["scheduler_active_scheduler"]) == 0
    # No scheduler ever ran: no age to tell (an alert on the age stays quiet; the one
    # on scheduler_active_scheduler speaks).
    assert samples(families["scheduler_heartbeat_age_seconds"]) == []

    make_active_scheduler(datetime.now(UTC))
    families = parse(metrics.exposition())
    assert value(families["scheduler_active_scheduler"]) == 1
    # No host or pid label: a failover must not start a new series.
    assert samples(families["scheduler_active_scheduler"])[0].labels == {}
    assert 1.5 <= value(families["scheduler_heartbeat_age_seconds"]) <= 10
    assert value(families["scheduler_standby_schedulers"]) == 0

    Lease.objects.update(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    families = parse(metrics.exposition())
    assert value(families["scheduler_active_scheduler"]) == 0
    # With none active, the age of the last one seen.
    assert value(families["scheduler_heartbeat_age_seconds"]) >= 1.5


@override_settings(SCHEDULER={"JOB_MODULES": ["tests.jobs"], "HISTORY_DAYS": 30})
def test_pruning_never_makes_the_counter_go_down(db: None) -> None:
    """A fire time 31 days old, recorded missed today (a catch-up after a long downtime):
    the nightly prune deletes it today. It is never counted, so no count drops."""
    make_job("a")
    make_run("a", "succeeded", T - timedelta(hours=1))
    make_run(
        "a",
        "missed",
        T - timedelta(hours=2),
        scheduled_at=T - timedelta(days=31),
        started_at=None,
        duration=None,
    )
    make_run("a", "missed", T - timedelta(hours=3), scheduled_at=T - timedelta(days=28))
    before = by_label(parse(metrics.exposition(T))["scheduler_runs"], "status")
    deleted = JobRun.objects.prune(T - timedelta(days=30))
    assert deleted == 1
    after = by_label(parse(metrics.exposition(T))["scheduler_runs"], "status")
    assert after == before
    assert before["missed"] == 1


def test_the_counter_starts_again_at_midnight_utc(db: None) -> None:
    make_job("a")
    make_run("a", "failed", DAY - timedelta(seconds=1))
    make_run("a", "failed", DAY + timedelta(seconds=1))
    runs = parse(metrics.exposition(DAY + timedelta(minutes=1)))["scheduler_runs"]
    assert value(runs, "scheduler_runs_total", job_id="a", status="failed") == 1
    runs = parse(metrics.exposition(DAY - timedelta(minutes=1) + timedelta(seconds=59)))
    assert value(runs["scheduler_runs"], "scheduler_runs_total", job_id="a", status="failed") == 1


HOSTILE_IDS = (
    'quote"d',
    "back\\slash",
    "new\nline",
    "tab\tand\r",
    "非ASCII-ジョブ-😀",
    '"} 1\nscheduler_active_scheduler 1\n# ',
    "",
)


def test_hostile_job_ids_round_trip_through_the_exposition(db: None) -> None:
    now = datetime.now(UTC)
    for job_id in HOSTILE_IDS:
        make_job(job_id)
        make_run(job_id, "failed", now - timedelta(seconds=1))
        DjangoJob.objects.create(id=job_id, next_run_time=now + timedelta(hours=1), job_state=b"")
    text = metrics.exposition().decode()
    families = parse(text)
    failed = {
        s.labels["job_id"]: s.value
        for s in samples(families["scheduler_runs"], "scheduler_runs_total", status="failed")
    }
    assert failed == dict.fromkeys(HOSTILE_IDS, 1)
    assert set(by_label(families["scheduler_job_next_fire_timestamp_seconds"], "job_id")) == set(
        HOSTILE_IDS
    )
    # The injected line did not become a sample of its own.
    assert samples(families["scheduler_active_scheduler"])[0].value == 0
    assert len(samples(families["scheduler_active_scheduler"])) == 1


# Who may read them ----------------------------------------------------------------


@pytest.fixture
def token() -> Iterator[str]:
    with override_settings(SCHEDULER={"JOB_MODULES": ["tests.jobs"], "METRICS_TOKEN": TOKEN}):
        yield TOKEN


def test_no_credentials_get_401_with_a_bearer_challenge(db: None, token: str) -> None:
    response = Client().get(URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer ")
    assert "scheduler_" not in response.content.decode()


@pytest.mark.parametrize(
    "header",
    [
        "Bearer wrong-token-wrong-token-wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        "Bearer ",
        "Bearer ключ-не-тот-ключ-не-тот",
        f"Basic {TOKEN}",
    ],
)
def test_a_wrong_token_gets_401(db: None, token: str, header: str) -> None:
    response = Client().get(URL, HTTP_AUTHORIZATION=header)
    assert response.status_code == 401
    assert "Bearer" in response["WWW-Authenticate"]
    assert "scheduler_" not in response.content.decode()


def test_the_right_token_gets_the_metrics(db: None, token: str) -> None:
    response = Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "no-store" in response["Cache-Control"]
    assert "scheduler_active_scheduler" in parse(response.content)


def test_gzip_when_asked(db: None, token: str) -> None:
    response = Client().get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}", HTTP_ACCEPT_ENCODING="gzip")
    assert response.status_code == 200
    assert response["Content-Encoding"] == "gzip"
    assert "scheduler_runs" in parse(gzip.decompress(response.content))


def test_without_a_token_configured_no_token_is_accepted(db: None) -> None:
    with override_settings(SCHEDULER={"JOB_MODULES": ["tests.jobs"], "METRICS_TOKEN": None}):
        assert Client().get(URL, HTTP_AUTHORIZATION="Bearer None").status_code == 401
        assert Client().get(URL, HTTP_AUTHORIZATION="Bearer ").status_code == 401
        staff = User.objects.create_user("staff", password="x", is_staff=True)
        client = Client()
        client.force_login(staff)
        assert client.get(URL).status_code == 200


def test_staff_sessions_get_the_metrics_and_others_403(db: None, token: str) -> None:
    client = Client()
    client.force_login(User.objects.create_user("staff", password="x", is_staff=True))
    response = client.get(URL)
    assert response.status_code == 200
    assert "scheduler_runs" in parse(response.content)

    client = Client()
    client.force_login(User.objects.create_user("user", password="x"))
    response = client.get(URL)
    assert response.status_code == 403
    assert "scheduler_" not in response.content.decode()

    inactive = User.objects.create_user("gone", password="x", is_staff=True, is_active=False)
    client = Client()
    client.force_login(inactive)
    assert client.get(URL).status_code in (401, 403)

    # A non-staff session with the right token: the token is what counts.
    assert client.get(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


def test_only_safe_methods(db: None, token: str) -> None:
    response = Client().post(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 405
    assert Client().head(URL, HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 200


# A real Prometheus scraping a real runserver while a real scheduler runs jobs -------


def needs_prometheus() -> None:
    if not PROMETHEUS.exists() or not PROMTOOL.exists():
        pytest.skip(f"no Prometheus at {PROMETHEUS} (apt-get install prometheus)")


class Prometheus:
    """A ``prometheus`` server of the test's own (its own config, storage and port on
    127.0.0.1), never the system service the Debian package may start on :9090."""

    def __init__(self, directory: Path, target: str, token: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "scheduler",
                    "metrics_path": "/scheduler/metrics",
                    "authorization": {"type": "Bearer", "credentials": token},
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        # JSON is YAML: no YAML library needed to write it.
        (directory / "prometheus.yml").write_text(json.dumps(config))
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={directory / 'prometheus.yml'}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    # A sample older than this is no longer the series' current value.
                    "--query.lookback-delta=3s",
                ],
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    return response.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_for(ready, 20, f"{self.url}/-/ready", interval=0.1)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of ``promql`` now: [{"metric": {...}, "value": [t, "v"]}]."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def start_runserver(env: SchedulerEnv, port: int, **overrides: Any) -> subprocess.Popen:
    """``manage.py runserver`` on the scheduler's database (as tests/browser does)."""
    variables = env.env("tests.proc.jobs", True, **overrides)
    with open(env.dir / "runserver.log", "ab") as log:
        return subprocess.Popen(
            [PYTHON, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=variables,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(popen: subprocess.Popen) -> None:
    if popen.poll() is None:
        popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(10)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(10)


def get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def failed_and_succeeded(env: SchedulerEnv, at: datetime) -> tuple[int, int, int]:
    """The history's counts at ``at``, as the counter counts them: proc.fail's failed runs
    and proc.tick's successes finished in ``at``'s UTC day up to ``at``, and how many of
    proc.fail's have a duration."""
    start = db_text(metrics.period_start(at))
    end = db_text(at)
    rows = env.query(
        "SELECT job_id, status, duration FROM scheduler_jobrun "
        "WHERE finished_at >= ? AND finished_at <= ?",
        (start, end),
    )
    failed = [r for r in rows if r["job_id"] == "proc.fail" and r["status"] == "failed"]
    succeeded = [r for r in rows if r["job_id"] == "proc.tick" and r["status"] == "succeeded"]
    timed = [r for r in failed if r["duration"] is not None]
    return len(failed), len(succeeded), len(timed)


@pytest.mark.integration
def test_a_real_prometheus_scrapes_what_the_history_says(scheduler_env: SchedulerEnv) -> None:
    needs_prometheus()
    token = json.dumps(TOKEN)  # SCHEDULER_<KEY> overrides are JSON
    scheduler = scheduler_env.start("tests.proc.jobs,tests.proc.failing", METRICS_TOKEN=token)
    port = free_port()
    web = start_runserver(scheduler_env, port, METRICS_TOKEN=token)
    target = f"127.0.0.1:{port}"
    metrics_url = f"http://{target}/scheduler/metrics"
    prometheus = Prometheus(scheduler_env.dir, target, TOKEN)
    try:
        prometheus.wait_ready()

        def scraped_ok() -> bool:
            if web.poll() is not None:
                raise AssertionError((scheduler_env.dir / "runserver.log").read_text())
            return [r["value"][1] for r in prometheus.query('up{job="scheduler"}')] == ["1"]

        wait_for(scraped_ok, 20, "a successful scrape", interval=0.2)
        # Runs of both jobs, failures and successes, while scrapes go on.
        wait_for(
            lambda: failed_and_succeeded(scheduler_env, datetime.now(UTC))[0] >= 3,
            15,
            "three failed runs of proc.fail",
            interval=0.2,
        )
        # Two scrapes that saw the count grow (so that increase() has something to see,
        # however late Prometheus came up on a busy machine).
        failed_query = 'scheduler_runs_total{job_id="proc.fail",status="failed"}'

        def scraped_failures() -> float | None:
            result = prometheus.query(failed_query)
            return float(result[0]["value"][1]) if result else None

        first = wait_for(scraped_failures, 15, "a scrape with proc.fail's failures", 0.2)
        wait_for(lambda: (scraped_failures() or 0) > first, 15, "a scrape with more of them", 0.2)
        active = prometheus.query("scheduler_active_scheduler")
        assert [r["value"][1] for r in active] == ["1"]
        assert "job" in active[0]["metric"] and active[0]["metric"]["job"] == "scheduler"
        scheduler.stop()
        stopped = datetime.now(UTC)
        expected_failed, expected_ok, expected_timed = failed_and_succeeded(scheduler_env, stopped)

        # Now the history no longer grows: wait for a scrape that began after the stop.
        def scraped_after_stop() -> list[dict[str, Any]]:
            result = prometheus.query(
                'timestamp(scheduler_runs_total{job_id="proc.fail",status="failed"})'
            )
            return (
                result
                if result and float(result[0]["value"][1]) > stopped.timestamp() + 0.5
                else []
            )

        wait_for(scraped_after_stop, 10, "a scrape after the scheduler stopped", interval=0.2)

        def one(promql: str) -> float:
            result = prometheus.query(promql)
            assert len(result) == 1, f"{promql}: {result}"
            return float(result[0]["value"][1])

        assert one('scheduler_runs_total{job_id="proc.fail",status="failed"}') == expected_failed
        assert one('scheduler_runs_total{job_id="proc.tick",status="succeeded"}') == expected_ok
        assert one('scheduler_runs_total{job_id="proc.tick",status="failed"}') == 0
        assert one('scheduler_run_duration_seconds_count{job_id="proc.fail"}') == expected_timed
        assert expected_failed >= 3 and expected_ok >= 3
        # A stopped scheduler gives up its lease: none is active.
        assert one("scheduler_active_scheduler") == 0
        assert one("max_over_time(scheduler_active_scheduler[1m])") == 1
        # The last success of proc.tick is its last succeeded row's finish.
        last = scheduler_env.query(
            "SELECT MAX(finished_at) AS at FROM scheduler_jobrun "
            "WHERE job_id = 'proc.tick' AND status = 'succeeded'"
        )[0]["at"]
        assert one(
            'scheduler_job_last_success_timestamp_seconds{job_id="proc.tick"}'
        ) == pytest.approx(parse_dt(last).timestamp(), abs=0.001)
        # The failure rate the alert rules read is there.
        assert one('increase(scheduler_runs_total{job_id="proc.fail",status="failed"}[1m])') > 0

        # Without the token: refused, and nothing said.
        status, body = get(metrics_url)
        assert status == 401 and "scheduler_" not in body

        # The database goes away: a web server whose database refuses connections (a
        # PostgreSQL address where none listens) answers 503 with a one-line reason, and
        # Prometheus records the failed scrape.
        stop(web)
        web = start_runserver(
            scheduler_env,
            port,
            METRICS_TOKEN=token,
            DATABASE='"scheduler"',
            PROC_SCHEDULER_DATABASE_URL=f"postgres://nobody:secret@127.0.0.1:{free_port()}/gone",
        )

        def answers() -> tuple[int, str] | None:
            if web.poll() is not None:
                raise AssertionError((scheduler_env.dir / "runserver.log").read_text())
            try:
                return get(metrics_url, TOKEN)
            except (urllib.error.URLError, ConnectionError):
                return None

        status, body = wait_for(answers, 20, "runserver to answer again", interval=0.1)
        assert status == 503, body
        assert body.count("\n") == 1 and "database" in body
        assert "scheduler_" not in body and "secret" not in body and "nobody" not in body
        wait_for(
            lambda: [r["value"][1] for r in prometheus.query('up{job="scheduler"}')] == ["0"],
            10,
            "Prometheus to see the failed scrape",
            interval=0.2,
        )
    except BaseException:
        print(prometheus.log()[-3000:])
        print((scheduler_env.dir / "runserver.log").read_text(errors="replace")[-5000:])
        raise
    finally:
        prometheus.stop()
        stop(web)


# The alert rules and the dashboard ----------------------------------------------------


def promtool(*args: str, cwd: Path = ROOT) -> str:
    needs_prometheus()
    result = subprocess.run(
        [str(PROMTOOL), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_alert_rules_are_valid() -> None:
    assert "SUCCESS: 9 rules found" in promtool("check", "rules", str(ALERTS))


def test_the_alert_rules_fire_when_they_should() -> None:
    """promtool's unit tests of the rules (tests/prometheus/alerts-test.yml): a failure
    fires SchedulerJobFailing and the midnight reset does not; no active scheduler for a
    minute; a job past its expected_every, and not when it is paused."""
    out = promtool("test", "rules", "alerts-test.yml", cwd=ROOT / "tests" / "prometheus")
    assert "SUCCESS" in out


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["definition"])
    return queries


def test_the_dashboards_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, loaded by promtool as a recording
    rule: promtool parses it as Prometheus would."""
    substitutions = {"$job_id": ".*", "$__rate_interval": "1m", "$__range": "1h"}
    rules = []
    for index, query in enumerate(dashboard_queries()):
        if query.startswith("label_values("):
            # Grafana's own function: its argument is a metric name.
            query = query.removeprefix("label_values(").split(",")[0]
        for variable, value in substitutions.items():
            query = query.replace(variable, value)
        assert "$" not in query, query
        rules.append({"record": f"dashboard:query_{index}", "expr": query})
    assert len(rules) >= 14
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert f"SUCCESS: {len(rules)} rules found" in promtool("check", "rules", str(path))


def test_the_dashboard_and_the_rules_name_only_metrics_that_exist(history: None) -> None:
    make_active_scheduler(datetime.now(UTC))
    exposed = {s.name for family in parse(metrics.exposition(T)).values() for s in family.samples}
    named = set()
    for text in (ALERTS.read_text(), json.dumps(dashboard_queries())):
        named |= set(re.findall(r"\bscheduler_[a-z_]+", text))
    assert named, "no metric named"
    assert named - exposed == set()
    # And the dashboard shows every metric the view serves.
    dashboard = json.dumps(dashboard_queries())
    families = {name for name in parse(metrics.exposition(T))}
    shown = {name for name in families if name in dashboard}
    assert families - shown <= {"scheduler_job_expected_interval_seconds"}


@pytest.mark.integration
@pytest.mark.postgres
def test_the_metrics_read_from_postgresql_match_its_history(tmp_path: Path) -> None:
    """The same collector on PostgreSQL (its own SQL for lateness and durations): a real
    scheduler's runs, then the exposition made in a process on that database."""
    from tests.proc.pg import PgSchedulerEnv, postgres_server

    with postgres_server() as server:
        env = PgSchedulerEnv(tmp_path, server, "metrics_pg")
        env.migrate()
        proc = env.start("tests.proc.jobs,tests.proc.failing")
        wait_for(lambda: len(env.runs("proc.fail", status="failed")) >= 3, 20, "three failures")
        assert proc.stop() == 0
        code = (
            "import sys; from scheduler import metrics; "
            "sys.stdout.write(metrics.exposition().decode())"
        )
        result = env.manage("shell", "-c", code, modules="tests.proc.jobs,tests.proc.failing")
        assert result.returncode == 0, result.stderr
        text = result.stdout[result.stdout.index("# HELP") :]
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        rows = env.runs()
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        for job_id, status in (("proc.fail", "failed"), ("proc.tick", "succeeded")):
            expected = sum(
                1
                for r in rows
                if r["job_id"] == job_id
                and r["status"] == status
                and r["finished_at"] is not None
                and r["finished_at"] >= today
            )
            key = ("scheduler_runs_total", (("job_id", job_id), ("status", status)))
            assert samples[key] == expected > 0, (job_id, status)
        lateness = [
            value
            for (name, labels), value in samples.items()
            if name == "scheduler_run_lateness_seconds_count" and ("job_id", "proc.tick") in labels
        ]
        assert lateness and lateness[0] > 0
        assert samples[("scheduler_active_scheduler", ())] == 0  # stopped cleanly
