"""The outbox of alerts: its notifications sent, tried again, or given up saying why.

Each change of an incident (``scheduler.incidents``) leaves one ``Notification`` row
per notifier. The active scheduler's outbox thread sends the due ones: a
notification is taken with a conditional update (so that two schedulers around a
take-over do not both send it), sent, and marked sent; one that fails is tried
again after a growing pause (``RETRY_BASE`` doubling, at most ``RETRY_CAP``), and
given up after ``MAX_ATTEMPTS`` with its last error. It runs in a thread of its
own: a notifier that is slow or down never delays a run, nor the scheduler.
``schedulerstatus`` delivers in its own process, as no scheduler may be running.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.db.models import F
from django.utils import timezone

from scheduler import alerts, conf, db
from scheduler.models import Incident, Job, Notification
from scheduler.registry import registry
from scheduler.text import describe_exception, storable

if TYPE_CHECKING:
    from scheduler.lease import Standing

logger = logging.getLogger(__name__)

RETRY_BASE = 10.0  # seconds before the second attempt
RETRY_CAP = 3600.0  # the longest pause between two attempts
MAX_ATTEMPTS = 10  # about three hours of trying
# Seconds a notification being sent is kept from the others (the notifier's timeout
# bounds a send well within it).
SENDING = 300.0
# Seconds between two looks at the outbox, unless woken (a new incident wakes it).
LOOK_EVERY = 2.0


def configured_notifiers() -> list[alerts.Notifier]:
    """The notifiers of ``SCHEDULER["ALERTS"]["NOTIFY"]`` (their module is loaded only
    when there are some)."""
    configured = conf.alerts()["NOTIFY"]
    if not configured:
        return []
    from scheduler.notifiers import build

    found: list[alerts.Notifier] = build(configured)
    return found


def alert_of(incident: Incident, state: str) -> alerts.Alert:
    """The Alert notifiers get for ``incident`` in ``state`` (opened or resolved)."""
    spec = registry.get(incident.job_id)
    name = spec.name if spec is not None else ""
    if not name and incident.job_id:
        name = Job.objects.filter(pk=incident.job_id).values_list("name", flat=True).first() or ""
    return alerts.Alert(
        incident_id=incident.pk,
        kind=incident.kind,
        state=state,
        job_id=incident.job_id,
        job_name=name or incident.job_id,
        title=incident.title,
        detail=incident.detail,
        opened_at=incident.opened_at,
        resolved_at=incident.resolved_at if state == alerts.RESOLVED else None,
        occurrences=incident.occurrences,
        run_id=incident.resolved_by if state == alerts.RESOLVED else incident.run_id,
        url=_admin_url(incident.pk),
    )


def _admin_url(incident_id: int) -> str:
    """The incident's admin page, absolute with ALERTS["SITE_URL"]; "" without the admin."""
    from django.urls import NoReverseMatch, reverse

    try:
        path = reverse("admin:scheduler_incident_change", args=[incident_id])
    except (NoReverseMatch, ImportError):
        return ""
    site = str(conf.alerts()["SITE_URL"]).rstrip("/")
    return f"{site}{path}"


class Outbox:
    """Sends the outbox's due notifications with ``notifiers`` (by their names): from a
    thread of its own while ``standing`` holds the lease, or at once (``deliver_due``)."""

    def __init__(
        self, notifiers: Sequence[alerts.Notifier], standing: Standing | None = None
    ) -> None:
        self.notifiers = {notifier.name: notifier for notifier in notifiers}
        self.standing = standing
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def names(self) -> list[str]:
        return list(self.notifiers)

    def start(self) -> None:
        if self._thread is None and self.notifiers:
            self._thread = threading.Thread(target=self._loop, name="scheduler-outbox", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self.standing is None or self.standing.holds():
                    self.deliver_due()
            except Exception as exc:
                if not db.is_transient(exc):
                    logger.exception("Error while sending alerts")
                db.close_broken()
            finally:
                db.close_old_connections()
            self._wake.wait(LOOK_EVERY)
            self._wake.clear()

    def deliver_due(self, now: datetime | None = None, limit: int = 100) -> int:
        """Send the notifications due now (at most ``limit``); how many went out."""
        now = now or timezone.now()
        due = list(
            Notification.objects.filter(
                sent_at__isnull=True, given_up_at__isnull=True, next_try_at__lte=now
            )
            .select_related("incident")
            .order_by("next_try_at", "id")[:limit]
        )
        sent = 0
        for notification in due:
            if self._stop.is_set():
                break
            sent += self._deliver(notification, now)
        return sent

    def _deliver(self, notification: Notification, now: datetime) -> int:
        rows = Notification.objects.filter(
            pk=notification.pk,
            sent_at__isnull=True,
            given_up_at__isnull=True,
            attempts=notification.attempts,
        )
        # Taken: the others leave it alone while it is being sent.
        if not rows.update(next_try_at=now + timedelta(seconds=SENDING)):
            return 0
        notifier = self.notifiers.get(notification.notifier)
        mine = Notification.objects.filter(pk=notification.pk)
        if notifier is None:
            mine.update(
                given_up_at=now,
                last_error=f"The notifier {notification.notifier!r} is not configured any "
                "more (SCHEDULER['ALERTS']['NOTIFY']).",
            )
            return 0
        alert = alert_of(notification.incident, notification.state)
        try:
            notifier.send(alert)
        except Exception as exc:  # noqa: BLE001 - any failure of a notifier is retried
            attempts = notification.attempts + 1
            error = storable(describe_exception(exc), 2000, "head")
            pause = min(RETRY_CAP, RETRY_BASE * 2 ** (attempts - 1))
            # A refusal that trying again cannot cure (a 4xx answer, a redirect) ends it.
            hopeless = getattr(exc, "retry", True) is False
            given_up = attempts >= MAX_ATTEMPTS or hopeless
            mine.update(
                attempts=F("attempts") + 1,
                last_error=error,
                next_try_at=timezone.now() + timedelta(seconds=pause),
                given_up_at=timezone.now() if given_up else None,
            )
            logger.error(
                "Could not send the alert %r with %s (attempt %d%s): %s",
                alert.summary,
                notification.notifier,
                attempts,
                ", given up" if given_up else f", next in {pause:.0f} s",
                error,
            )
            return 0
        mine.update(sent_at=timezone.now(), attempts=F("attempts") + 1, last_error="")
        logger.info("Sent the alert %r with %s.", alert.summary, notification.notifier)
        return 1
