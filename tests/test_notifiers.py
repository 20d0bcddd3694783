"""scheduler/notifiers.py: alerts delivered to a real SMTP server (aiosmtpd, in a
subprocess) and to a real HTTP server (tests/servers.py), including servers that fail,
hang, refuse connections or answer with megabytes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import Message
from pathlib import Path
from typing import Any

import django
import pytest
from django.core.exceptions import ImproperlyConfigured

from scheduler import notifiers
from scheduler.alerts import FAILING, OPENED, RESOLVED, Alert
from scheduler.notifiers import DeliveryError, MailAdmins, Webhook
from tests.proc.harness import wait_for
from tests.servers import Recorder, SmtpServer, refused_url

OPENED_AT = datetime(2030, 5, 1, 1, 0, 12, tzinfo=UTC)
RESOLVED_AT = datetime(2030, 5, 1, 1, 30, 0, tzinfo=UTC)
SITE = "https://ops.example.com"


def alert(**changes: Any) -> Alert:
    values: dict[str, Any] = {
        "incident_id": 12,
        "kind": FAILING,
        "state": OPENED,
        "job_id": "myapp.jobs.report",
        "job_name": "Nightly report",
        "title": "Job myapp.jobs.report failed 3 times in a row",
        "detail": "ValueError: the report table is empty\nTraceback (most recent call last): ...",
        "opened_at": OPENED_AT,
        "resolved_at": None,
        "occurrences": 3,
        "run_id": 345,
        "url": "/admin/scheduler/incident/12/change/",
    }
    values.update(changes)
    return Alert(**values)


@pytest.fixture
def smtp(tmp_path: Path, settings: Any) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path / "maildir")
    smtp_backend = "django.core.mail.backends.smtp.EmailBackend"
    if django.VERSION >= (6, 1):
        # Django 6.1 configures mail with MAILERS (the EMAIL_* settings are deprecated).
        settings.MAILERS = {
            "default": {
                "BACKEND": smtp_backend,
                "OPTIONS": {"host": "127.0.0.1", "port": server.port, "timeout": 5},
            }
        }
    else:
        settings.EMAIL_BACKEND = smtp_backend
        settings.EMAIL_HOST = "127.0.0.1"
        settings.EMAIL_PORT = server.port
        settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
        settings.EMAIL_TIMEOUT = 5
    settings.SERVER_EMAIL = "scheduler@example.com"
    settings.EMAIL_SUBJECT_PREFIX = "[Django] "
    # Django 6 takes plain addresses (tuples are deprecated); 5.2 only (name, address).
    admin = "ops@example.com"
    settings.ADMINS = [admin] if django.VERSION >= (6,) else [("Ops", admin)]
    try:
        yield server
    finally:
        server.stop()


def body_of(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode(message.get_content_charset() or "utf-8")


def subject(message: Message) -> str:
    """The Subject header unfolded (a long one arrives folded over lines)."""
    return str(message["Subject"]).replace("\r\n", "").replace("\n", "").strip()


def arrived(smtp: SmtpServer, count: int = 1) -> list[Message]:
    return wait_for(
        lambda: (found := smtp.messages()) and len(found) >= count and found,
        10,
        f"{count} message(s) at the SMTP server",
    )


# -- build ---------------------------------------------------------------------------------


def test_build_makes_one_notifier_per_place_with_stable_distinct_names() -> None:
    secret = "https://hooks.slack.com/services/T000/B000/very-secret-token"
    notify = [
        "mail_admins",
        {"webhook": secret, "format": "slack"},
        {"webhook": "https://hooks.slack.com/services/T000/B001/other", "format": "slack"},
        {"webhook": "http://127.0.0.1:9/hook", "timeout": 2.5},
        "mail_admins",  # twice: one notifier, the same alert need not arrive twice
    ]
    built = notifiers.build(notify, site_url=SITE)
    names = [n.name for n in built]
    assert names[0] == "mail_admins"
    assert len(names) == len(set(names)) == 4
    assert names[1].startswith("webhook:hooks.slack.com:") and names[1] != names[2]
    assert names[3].startswith("webhook:127.0.0.1:9:")
    assert all(len(name) <= 64 for name in names)
    # The secret part of a webhook URL is in no name (names are shown in the admin).
    assert not any("secret" in name or "T000" in name for name in names)
    # Stable: built again (another process, after a restart), the same names.
    assert [n.name for n in notifiers.build(notify, site_url=SITE)] == names
    hook = built[3]
    assert isinstance(hook, Webhook) and hook.timeout == 2.5 and hook.format == "json"
    long_host = "https://" + "a" * 250 + "/x"
    assert len(notifiers.build([{"webhook": long_host}], site_url="")[0].name) <= 64


# -- mail ------------------------------------------------------------------------------------


def test_mail_admins_sends_the_alert_through_a_real_smtp_server(smtp: SmtpServer) -> None:
    MailAdmins(SITE).send(alert())
    [message] = arrived(smtp)
    assert message["To"] == "ops@example.com" or "ops@example.com" in message["To"]
    assert subject(message) == (
        "[Django] [scheduler] FAILING: Job myapp.jobs.report failed 3 times in a row"
    )
    body = body_of(message)
    assert "Job myapp.jobs.report failed 3 times in a row" in body
    # Times with their zone (the project's TIME_ZONE), the job, how often, what, where.
    assert "Opened:      2030-05-01 01:00:12 UTC (UTC+0000)" in body
    assert "Nightly report (myapp.jobs.report)" in body
    assert "Occurrences: 3" in body
    assert "ValueError: the report table is empty" in body
    assert f"Incident: {SITE}/admin/scheduler/incident/12/change/" in body


def test_a_resolved_alert_says_so_and_a_time_is_shown_in_the_projects_zone(
    smtp: SmtpServer, settings: Any
) -> None:
    settings.TIME_ZONE = "Europe/Paris"
    MailAdmins("").send(alert(state=RESOLVED, resolved_at=RESOLVED_AT))
    [message] = arrived(smtp)
    assert subject(message).startswith("[Django] [scheduler] RESOLVED: ")
    body = body_of(message)
    assert "Resolved:    2030-05-01 03:30:00 CEST (UTC+0200)" in body
    assert "Opened:      2030-05-01 03:00:12 CEST (UTC+0200)" in body
    # No SITE_URL: the path, and how to make it a link.
    assert "Incident: /admin/scheduler/incident/12/change/ in the admin (set SCHEDULER" in body


def test_mail_admins_with_no_admins_raises_saying_so(smtp: SmtpServer, settings: Any) -> None:
    settings.ADMINS = []
    with pytest.raises(ImproperlyConfigured, match="ADMINS setting is empty"):
        MailAdmins(SITE).send(alert())
    time.sleep(0.3)
    assert smtp.messages() == []


def test_mail_admins_raises_when_the_smtp_server_is_down(smtp: SmtpServer) -> None:
    smtp.stop()
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        MailAdmins(SITE).send(alert())
    assert time.monotonic() - started < 2


def test_a_hostile_alert_arrives_as_a_mail_on_one_subject_line(smtp: SmtpServer) -> None:
    hostile = alert(
        title="Job\x00 failed\nBcc: victim@example.com \udcff done",
        job_name="name\udcfe\x00",
        detail="start \x00 \udcff " + "x" * 3_000_000,
    )
    MailAdmins(SITE).send(hostile)
    [message] = arrived(smtp)
    # A header injection stays in the subject.
    assert "Bcc: victim" in subject(message) and "\x00" not in subject(message)
    assert message["Bcc"] is None
    body = body_of(message)
    assert "start \\x00 \\udcff xxx" in body
    assert len(body) < 20_000  # 3 MB of detail, cut


# -- webhooks ----------------------------------------------------------------------------------


def test_a_json_webhook_posts_every_field_of_the_alert(http: Recorder) -> None:
    Webhook(http.url("/hook"), "json", 5, SITE).send(alert())
    [request] = http.requests
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["Content-Type"] == "application/json"
    assert request.json() == {
        "incident_id": 12,
        "kind": "failing",
        "state": "opened",
        "job_id": "myapp.jobs.report",
        "job_name": "Nightly report",
        "title": "Job myapp.jobs.report failed 3 times in a row",
        "detail": "ValueError: the report table is empty\nTraceback (most recent call last): ...",
        "opened_at": "2030-05-01T01:00:12+00:00",
        "resolved_at": None,
        "occurrences": 3,
        "run_id": 345,
        "url": "/admin/scheduler/incident/12/change/",
        "summary": "[scheduler] FAILING: Job myapp.jobs.report failed 3 times in a row",
        "link": f"{SITE}/admin/scheduler/incident/12/change/",
    }


def test_a_slack_webhook_posts_a_short_text_with_the_link(http: Recorder) -> None:
    Webhook(http.url("/slack"), "slack", 5, SITE).send(alert(title="a < b & c"))
    [request] = http.requests
    payload = request.json()
    assert list(payload) == ["text"]
    lines = payload["text"].split("\n")
    assert lines[0] == ":rotating_light: *[scheduler] FAILING: a &lt; b &amp; c*"
    assert lines[1] == "ValueError: the report table is empty"
    assert lines[-1] == f"<{SITE}/admin/scheduler/incident/12/change/|Open the incident>"


def test_a_teams_webhook_posts_a_message_card_red_then_green(http: Recorder) -> None:
    hook = Webhook(http.url("/teams"), "teams", 5, SITE)
    hook.send(alert())
    hook.send(alert(state=RESOLVED, resolved_at=RESOLVED_AT))
    opened, resolved = (r.json() for r in http.requests)
    assert opened["@type"] == "MessageCard"
    assert opened["@context"] == "https://schema.org/extensions"
    assert opened["themeColor"] == "D13438" and resolved["themeColor"] == "2EB886"
    assert opened["title"] == opened["summary"] == alert().summary
    assert "seen 3 times" in opened["text"] and "the report table is empty" in opened["text"]
    assert resolved["title"].startswith("[scheduler] RESOLVED: ")
    assert opened["potentialAction"][0]["targets"][0]["uri"] == (
        f"{SITE}/admin/scheduler/incident/12/change/"
    )


def test_a_webhook_answering_500_raises_with_the_status_and_the_start_of_the_body(
    http: Recorder,
) -> None:
    hook = Webhook(http.url("/status/500/hook"), "json", 5, SITE)
    with pytest.raises(DeliveryError) as caught:
        hook.send(alert())
    assert caught.value.status == 500 and caught.value.retry
    assert str(caught.value) == (
        f"127.0.0.1:{http.port} answered 500 Internal Server Error: 'answer 500: not today'"
    )
    with pytest.raises(DeliveryError) as caught:
        Webhook(http.url("/status/404/hook")).send(alert())
    assert caught.value.status == 404 and not caught.value.retry


def test_a_webhook_that_is_down_raises_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="could not reach 127.0.0.1:.*refused"):
        Webhook(refused_url("/hook"), "json", 5).send(alert())
    assert time.monotonic() - started < 1


def test_a_webhook_that_hangs_times_out_within_its_timeout(http: Recorder) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="did not answer within 0.5 s"):
        Webhook(http.url("/hang/hook"), "json", 0.5).send(alert())
    assert 0.4 < time.monotonic() - started < 1.5


def test_a_body_sent_a_byte_at_a_time_cannot_hold_the_sender_past_its_timeout(
    http: Recorder,
) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError):
        Webhook(http.url("/trickle/hook"), "json", 1).send(alert())
    assert time.monotonic() - started < 2


def test_a_huge_answer_is_not_read_and_its_start_is_shown(http: Recorder) -> None:
    started = time.monotonic()
    with pytest.raises(DeliveryError) as caught:
        Webhook(http.url("/huge/hook"), "json", 5).send(alert())
    assert time.monotonic() - started < 1
    assert str(caught.value).endswith(": '" + "E" * 200 + "'")


def test_a_redirect_is_not_followed_and_says_where_it_points(http: Recorder) -> None:
    with pytest.raises(DeliveryError) as caught:
        Webhook(http.url("/redirect/hook"), "json", 5).send(alert())
    assert caught.value.status == 302 and not caught.value.retry
    assert "a redirect to elsewhere.example: redirects are not followed" in str(caught.value)
    assert len(http.requests) == 1


def test_a_hostile_alert_goes_out_as_valid_json_cut_to_size(http: Recorder) -> None:
    hostile = alert(
        title="\x00title\udcff\n",
        job_id="job\udcfe",
        detail="\x00" + "\udcff" * 10 + "y" * 5_000_000,
    )
    for fmt in ("json", "slack", "teams"):
        Webhook(http.url(f"/{fmt}"), fmt, 5, SITE).send(hostile)
    sent = {r.path: r for r in http.requests}
    data = sent["/json"].json()
    assert data["title"] == "\\x00title\\udcff\n"
    assert data["job_id"] == "job\\udcfe"
    assert data["detail"].startswith("\\x00\\udcff\\udcff")
    assert len(data["detail"]) < 11_000
    for request in sent.values():
        assert len(request.body) < 30_000
        # Strictly valid: no lone surrogate escapes, no NUL (some receivers refuse both).
        text = json.dumps(request.json(), ensure_ascii=False)
        text.encode("utf-8")
        assert "\x00" not in text
