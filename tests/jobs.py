"""Jobs registered for the test suite."""

from datetime import datetime

from scheduler import cron, interval

CALLS: list[tuple[str, object]] = []


@interval(hours=1, id="tests.hourly")
def hourly() -> None:
    """An hourly job."""
    CALLS.append(("hourly", None))


@cron("0 3 * * *", id="tests.nightly")
def nightly(scheduled_at: datetime) -> None:
    CALLS.append(("nightly", scheduled_at))
    print("nightly ran")


@cron("*/5 * * * *", id="tests.failing")
def failing() -> None:
    """Always fails."""
    print("about to fail <script>")
    raise RuntimeError("boom <b>bold</b>")
