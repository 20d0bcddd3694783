"""The leader lease, in process, on the test database."""

from __future__ import annotations

import pytest
from django.utils import timezone

from scheduler import lease
from scheduler.models import Lease


class StopDuringRenewal(lease.Leadership):
    """A stop that arrives while a round of the lease loop is renewing the lease."""

    def _try_acquire(self) -> bool:
        acquired = super()._try_acquire()
        self.step_down()
        return acquired


@pytest.mark.django_db
def test_a_stop_during_a_renewal_neither_elects_nor_keeps_the_lease() -> None:
    # Seen in CI: the stop released the lease while the loop's round was renewing
    # it; the round then took this scheduler for newly elected and resumed a
    # scheduler that had shut down.
    elected = []
    leadership = StopDuringRenewal(lambda: elected.append(True), lambda: None)
    leadership.step()
    assert elected == []
    assert not leadership.holds()
    (row,) = Lease.objects.all()
    assert row.holder == leadership.instance_id
    assert row.expires_at < timezone.now()  # given up: a standby may take it at once

    # And a plain round still elects (the guard is about stopping only).
    elected_too = []
    other = lease.Leadership(lambda: elected_too.append(True), lambda: None)
    other.step()
    assert elected_too == [True] and other.holds()
