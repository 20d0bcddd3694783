"""Twenty jobs every second, each at its own moment of the second (every 50 ms).

The main loop claims the fire times of the next moment together with the due
one, so a stop always finds claims made ahead of their time.
"""

from datetime import UTC, datetime, timedelta

from scheduler import interval
from tests.proc.marks import mark

START = datetime(2024, 1, 1, tzinfo=UTC)


def staggered(number: int, scheduled_at: datetime) -> None:
    """One of twenty, each at its own moment."""
    mark(f"staggered {number} {scheduled_at.isoformat()}")


for _number in range(20):
    interval(
        seconds=1,
        start_date=START + timedelta(milliseconds=50 * _number),
        id=f"proc.staggered.{_number:02d}",
        args=(_number,),
    )(staggered)
