"""Jobs that do awkward but real things, run on request by the robustness tests.

Each marks its start (and, where it gets there, its end) in the ``PROC_MARKS``
file, with the fire time it serves.
"""

import logging
import os
import sys
import threading
import time
from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark

logger = logging.getLogger(__name__)

ON_REQUEST = "0 0 1 1 *"
# A file name that is not UTF-8, as os.fsdecode gives it: a lone surrogate.
BAD_NAME = os.fsdecode(b"report-\xff.csv")


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")

    def __repr__(self) -> str:
        raise RuntimeError("nor represented")


@cron(ON_REQUEST, id="hostile.surrogates")
def surrogates(scheduled_at: datetime) -> None:
    """Prints and logs a file name that is not UTF-8, then fails naming it."""
    mark(f"start hostile.surrogates {scheduled_at.isoformat()}")
    print(f"opening {BAD_NAME}")
    logger.warning("cannot read %s", BAD_NAME)
    raise FileNotFoundError(f"no such file: {BAD_NAME}")


@cron(ON_REQUEST, id="hostile.nul")
def nul(scheduled_at: datetime) -> None:
    """Prints NUL characters and raw bytes, and fails with a NUL in its message."""
    mark(f"start hostile.nul {scheduled_at.isoformat()}")
    print("before\x00after")
    sys.stdout.buffer.write(b"raw bytes \xff\xfe and \x00 NUL\n")
    sys.stdout.buffer.flush()
    raise ValueError("bad\x00value")


@cron(ON_REQUEST, id="hostile.unprintable")
def unprintable(scheduled_at: datetime) -> None:
    """Fails with an exception whose str() and repr() raise."""
    mark(f"start hostile.unprintable {scheduled_at.isoformat()}")
    raise UnprintableError()


@cron(ON_REQUEST, id="hostile.huge")
def huge(scheduled_at: datetime) -> None:
    """Prints three megabytes, then fails with a message of a million characters."""
    mark(f"start hostile.huge {scheduled_at.isoformat()}")
    chunk = "x" * 1023 + "\n"
    for _ in range(3 * 1024):
        sys.stdout.write(chunk)
    print("the end of the output")
    raise RuntimeError("m" * 1_000_000 + " the end of the message")


@cron(ON_REQUEST, id="hostile.badlog")
def badlog(scheduled_at: datetime) -> None:
    """Logs a record whose arguments do not fit its message, and succeeds."""
    mark(f"start hostile.badlog {scheduled_at.isoformat()}")
    logger.warning("%d items", "not a number")
    print("still here")
    mark(f"end hostile.badlog {scheduled_at.isoformat()}")


@cron(ON_REQUEST, id="hostile.fine")
def fine(scheduled_at: datetime) -> None:
    """An ordinary job, recorded beside the awkward ones."""
    mark(f"start hostile.fine {scheduled_at.isoformat()}")
    print("all good")
    mark(f"end hostile.fine {scheduled_at.isoformat()}")


@cron(ON_REQUEST, id="hostile.refused")
def refused(scheduled_at: datetime) -> None:
    """Prints a word the test teaches the database to refuse (a trigger)."""
    mark(f"start hostile.refused {scheduled_at.isoformat()}")
    print("forbidden word")
    mark(f"end hostile.refused {scheduled_at.isoformat()}")


@cron(ON_REQUEST, id="hostile.leaves_a_thread")
def leaves_a_thread(scheduled_at: datetime) -> None:
    """Starts a non-daemon thread that never ends, and returns."""
    mark(f"start hostile.leaves_a_thread {scheduled_at.isoformat()}")
    threading.Thread(target=time.sleep, args=(3600,), name="left-behind", daemon=False).start()
    mark(f"end hostile.leaves_a_thread {scheduled_at.isoformat()}")


@cron(ON_REQUEST, id="hostile.slow", max_instances=1)
def slow(scheduled_at: datetime) -> None:
    """Runs for PROC_SLOW_SECONDS (default 2), marking its start and end with the clock."""
    mark(f"start hostile.slow {scheduled_at.isoformat()} {time.time():.3f}")
    time.sleep(float(os.environ.get("PROC_SLOW_SECONDS", "2")))
    mark(f"end hostile.slow {scheduled_at.isoformat()} {time.time():.3f}")
