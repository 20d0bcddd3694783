"""What the scheduler tells people when something breaks: an ``Alert`` (an incident
opened, or resolved), and the ``Notifier``s that deliver it.

The detector (``scheduler.incidents``) turns history into incidents and hands each
change of one (opened, resolved) to the notifiers configured in
``SCHEDULER["ALERTS"]["NOTIFY"]`` (``scheduler.notifiers.build``), through the
outbox that survives a take-over. A notifier sends one alert or raises; it is
tried again later, and never blocks or crashes the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# The kinds of incident.
FAILING = "failing"  # a job's last runs failed (ALERTS["FAILURES"] in a row, or alert_after)
MISSED = "missed"  # a fire time was missed
OVERDUE = "overdue"  # no successful run within the expected interval plus a grace
STUCK = "stuck"  # a run still going past its timeout, or far past its usual duration
NO_SCHEDULER = "no_scheduler"  # no active scheduler holds the lease
KINDS = (FAILING, MISSED, OVERDUE, STUCK, NO_SCHEDULER)

OPENED, RESOLVED = "opened", "resolved"


@dataclass(frozen=True)
class Alert:
    """One change of an incident, as every notifier gets it (plain values)."""

    incident_id: int
    kind: str  # one of KINDS
    state: str  # OPENED or RESOLVED
    job_id: str  # "" for an incident of the scheduler itself (NO_SCHEDULER)
    job_name: str
    title: str  # one line, e.g. "Job myapp.jobs.report failed 3 times in a row"
    detail: str  # what happened, e.g. the last exception, the missed fire time
    opened_at: datetime  # aware
    resolved_at: datetime | None  # aware, when resolved
    occurrences: int  # how many times it was seen while open (fire times, failures)
    run_id: int | None  # the run that opened it (or resolved it), when there is one
    # The admin page of the incident (a path, "/admin/scheduler/incident/12/change/"),
    # or "" when the admin is not installed; ALERTS["SITE_URL"] makes it absolute.
    url: str

    @property
    def summary(self) -> str:
        """``[scheduler] FAILING myapp.jobs.report: ...`` or ``RESOLVED``: a subject line."""
        state = "RESOLVED" if self.state == RESOLVED else self.kind.upper().replace("_", " ")
        return f"[scheduler] {state}: {self.title}"


class Notifier(Protocol):
    """Delivers alerts somewhere (mail, a webhook): ``send`` raises when it could not."""

    name: str

    def send(self, alert: Alert) -> None: ...
