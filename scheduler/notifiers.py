"""The notifiers of ``SCHEDULER["ALERTS"]["NOTIFY"]``: mail to Django's ``ADMINS``, and
webhooks (plain JSON, Slack, Microsoft Teams).

``build(conf.alerts()["NOTIFY"])`` makes them, once the setting is checked
(``scheduler.conf``). Each has a ``name`` the outbox keeps with every alert it
holds for it, stable while the setting names the same places: ``"mail_admins"``,
``"webhook:<host>:<8 hex digits of the URL's SHA-256>"`` (not the URL itself: a
webhook URL is a secret). ``send(alert)`` returns once the alert is delivered and
raises otherwise, with a message that says why (``DeliveryError`` for a webhook),
for the outbox to record and try again.

Every text of an alert goes out as a mail or a JSON body can carry it: lone
surrogates and NUL characters escaped (``scheduler.text.storable``), long details
cut, a subject on one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import mail_admins
from django.utils import timezone

from scheduler import conf, outbound
from scheduler.alerts import RESOLVED, Alert, Notifier
from scheduler.outbound import DeliveryError
from scheduler.text import storable

__all__ = ["DeliveryError", "MailAdmins", "Webhook", "build"]

# Characters of an alert's detail a mail or a JSON webhook carries; a chat message
# (Slack, Teams) carries fewer, as a chat shows them (Slack cuts a message at 40,000,
# Teams refuses cards over 28 kB).
DETAIL_LIMIT = 10_000
CHAT_DETAIL_LIMIT = 2_000
# The longest subject line (RFC 5322 recommends lines under 78 characters; mail
# clients show about this much), and the longest title a notifier sends.
TITLE_LIMIT = 200
# The outbox's column for a notifier's name (Notification.notifier).
NAME_LIMIT = 64
# Teams' colour bar: red for a problem, green once it is resolved.
RED, GREEN = "D13438", "2EB886"
DEFAULT_TIMEOUT = 10


def build(notify: Sequence[Any], site_url: str | None = None) -> list[Notifier]:
    """The notifiers of a checked ``ALERTS["NOTIFY"]`` list, in its order.

    ``site_url``: the site's address for links to the admin (by default
    ``ALERTS["SITE_URL"]``). Two entries that name the same place make one notifier:
    the same alert need not arrive twice.
    """
    if site_url is None:
        site_url = str(conf.alerts()["SITE_URL"])
    found: dict[str, Notifier] = {}
    for item in notify:
        notifier: Notifier
        if item == "mail_admins":
            notifier = MailAdmins(site_url)
        elif isinstance(item, dict) and isinstance(item.get("webhook"), str):
            notifier = Webhook(
                item["webhook"],
                str(item.get("format", "json")),
                float(item.get("timeout", DEFAULT_TIMEOUT)),
                site_url,
            )
        else:
            # conf checks the setting before anything reads it; this is a programming error.
            raise ImproperlyConfigured(f"SCHEDULER['ALERTS']['NOTIFY'] holds {item!r}.")
        found.setdefault(notifier.name, notifier)
    return list(found.values())


def link(alert: Alert, site_url: str) -> str:
    """The incident's admin page as a full address, or "" without SITE_URL or admin."""
    if not alert.url or not site_url:
        return ""
    return site_url.rstrip("/") + "/" + alert.url.lstrip("/")


def when(value: datetime | None) -> str:
    """A time as people read it: in the project's zone, naming the zone and its offset."""
    if value is None:
        return "-"
    local = timezone.localtime(value) if timezone.is_aware(value) else value
    return local.strftime("%Y-%m-%d %H:%M:%S %Z (UTC%z)").replace(" ()", "")


def _line(text: str, limit: int = TITLE_LIMIT) -> str:
    """One line: control characters (newlines, NUL) as spaces, cut to ``limit``."""
    clean = storable(text, limit * 4, keep="head")
    single = "".join(" " if ch < " " or ch == "\x7f" else ch for ch in clean)
    single = " ".join(single.split())
    return single if len(single) <= limit else single[: limit - 1] + "…"


def _detail(alert: Alert, limit: int) -> str:
    return storable(alert.detail, limit, keep="head")


class MailAdmins:
    """Mails each alert to Django's ``ADMINS`` with ``django.core.mail.mail_admins``, by
    the project's email settings (``EMAIL_BACKEND``, ``EMAIL_HOST``...; ``MAILERS`` from
    Django 6.1).

    With ``ADMINS`` empty it raises (``ImproperlyConfigured``) instead of sending
    nothing, as ``mail_admins`` itself would: "mail_admins" in NOTIFY says someone
    expects these mails, and the outbox then shows why none came.
    """

    name = "mail_admins"

    def __init__(self, site_url: str = "") -> None:
        self.site_url = site_url

    def send(self, alert: Alert) -> None:
        if not settings.ADMINS:
            raise ImproperlyConfigured(
                "The ADMINS setting is empty: there is nobody to mail alerts to. Add "
                "ADMINS, or take 'mail_admins' out of SCHEDULER['ALERTS']['NOTIFY']."
            )
        mail_admins(_line(alert.summary), self.body(alert), fail_silently=False)

    def body(self, alert: Alert) -> str:
        """The mail's plain text."""
        job = (
            f"{_line(alert.job_name)} ({_line(alert.job_id)})"
            if alert.job_id
            else "the scheduler itself"
        )
        lines = [_line(alert.title, 1000), ""]
        if alert.state == RESOLVED:
            lines.append(f"Resolved:    {when(alert.resolved_at)}")
        lines += [
            f"Opened:      {when(alert.opened_at)}",
            f"Kind:        {alert.kind}",
            f"Job:         {job}",
            f"Occurrences: {alert.occurrences}",
        ]
        if alert.run_id is not None:
            lines.append(f"Run:         #{alert.run_id}")
        detail = _detail(alert, DETAIL_LIMIT)
        if detail:
            lines += ["", detail]
        address = link(alert, self.site_url)
        if address:
            lines += ["", f"Incident: {address}"]
        elif alert.url:
            lines += [
                "",
                f"Incident: {alert.url} in the admin (set SCHEDULER['ALERTS']['SITE_URL'] "
                "for a full link)",
            ]
        lines += ["", "-- ", "Sent by the scheduler (SCHEDULER['ALERTS']['NOTIFY'])."]
        return "\n".join(lines) + "\n"


class Webhook:
    """POSTs each alert as JSON to a URL: ``format`` "json" (every field of the alert),
    "slack" (a Slack incoming webhook's ``{"text": ...}``; Mattermost and Rocket.Chat
    take it too) or "teams" (an Office 365 connector's MessageCard).

    A 2xx answer is delivery; any other, a refused connection or no answer within
    ``timeout`` seconds raises ``DeliveryError``. Redirects are not followed
    (``scheduler.outbound``): the error names where it points.
    """

    def __init__(
        self, url: str, format: str = "json", timeout: float = 10, site_url: str = ""
    ) -> None:
        self.url = url
        self.format = format
        self.timeout = timeout
        self.site_url = site_url
        digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        host = outbound.where(url)[: NAME_LIMIT - len("webhook:") - 9]
        self.name = f"webhook:{host}:{digest}"

    def __repr__(self) -> str:
        return f"<Webhook {self.name} {self.format}>"

    def send(self, alert: Alert) -> None:
        body = json.dumps(self.payload(alert), ensure_ascii=True).encode("ascii")
        outbound.send(self.url, body, self.timeout)

    def payload(self, alert: Alert) -> dict[str, Any]:
        if self.format == "slack":
            return self._slack(alert)
        if self.format == "teams":
            return self._teams(alert)
        return self._json(alert)

    def _json(self, alert: Alert) -> dict[str, Any]:
        data = asdict(alert)
        for key, value in data.items():
            if isinstance(value, datetime):
                data[key] = value.isoformat()
            elif isinstance(value, str):
                data[key] = storable(value, DETAIL_LIMIT, keep="head")
        data["summary"] = _line(alert.summary)
        data["link"] = link(alert, self.site_url)
        return data

    def _slack(self, alert: Alert) -> dict[str, Any]:
        # Slack's mrkdwn: &, < and > are escaped; <url|text> is a link.
        def esc(text: str) -> str:
            return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

        icon = ":white_check_mark:" if alert.state == RESOLVED else ":rotating_light:"
        lines = [f"{icon} *{esc(_line(alert.summary))}*"]
        first = _line(alert.detail.split("\n", 1)[0] if alert.detail else "", 300)
        if first:
            lines.append(esc(first))
        lines.append(self._facts(alert))
        address = link(alert, self.site_url)
        if address:
            lines.append(f"<{address}|Open the incident>")
        return {"text": "\n".join(lines)}

    def _teams(self, alert: Alert) -> dict[str, Any]:
        detail = _detail(alert, CHAT_DETAIL_LIMIT)
        text = self._facts(alert)
        if detail:
            text += "\n\n" + "\n\n".join(_line(part, 1000) for part in detail.splitlines()[:20])
        card: dict[str, Any] = {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": _line(alert.summary),
            "themeColor": GREEN if alert.state == RESOLVED else RED,
            "title": _line(alert.summary),
            "text": text,
        }
        address = link(alert, self.site_url)
        if address:
            card["potentialAction"] = [
                {
                    "@type": "OpenUri",
                    "name": "Open the incident",
                    "targets": [{"os": "default", "uri": address}],
                }
            ]
        return card

    def _facts(self, alert: Alert) -> str:
        opened = f"opened {when(alert.opened_at)}"
        if alert.state == RESOLVED:
            opened = f"resolved {when(alert.resolved_at)}, {opened}"
        seen = f"{alert.occurrences} time{'s' if alert.occurrences != 1 else ''}"
        job = _line(alert.job_id) if alert.job_id else "the scheduler"
        return f"{job}: {opened}; seen {seen}"
