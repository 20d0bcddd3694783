"""scheduler/bulk.py: many-row SQL, on the test database."""

from __future__ import annotations

from datetime import UTC, datetime

from django.db import connection


def test_datetimes_are_written_as_django_writes_them() -> None:
    from zoneinfo import ZoneInfo

    from scheduler import bulk

    adapt = bulk.datetime_adapter(connection)
    paris = ZoneInfo("Europe/Paris")
    values = [
        None,
        datetime(2026, 3, 29, 0, 59, 59, 999999, tzinfo=UTC),  # the hour before DST begins
        datetime(2026, 3, 29, 3, 0, 1, tzinfo=paris),
        datetime(2026, 10, 25, 2, 30, tzinfo=paris, fold=1),
        datetime(2026, 1, 1, 12, 0),  # naive: left to Django
    ]
    for value in values:
        assert adapt(value) == connection.ops.adapt_datetimefield_value(value), value
