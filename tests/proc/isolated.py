"""Jobs that run in a child process (isolation="process"), run on request by the tests of
scheduler/isolation.py: what a thread could not survive or stop.

Each marks its start in the ``PROC_MARKS`` file with the fire time it serves (and its
process id, which is not the scheduler's).
"""

import ctypes
import os
import sys
import time
from datetime import datetime

from scheduler import cron
from tests.proc.marks import mark

ON_REQUEST = "0 0 1 1 *"


@cron(ON_REQUEST, id="iso.fine", isolation="process")
def fine(scheduled_at: datetime) -> None:
    mark(f"start iso.fine {scheduled_at.isoformat()} pid={os.getpid()}")
    print("hello from a child")


@cron(ON_REQUEST, id="iso.fails", isolation="process")
def fails(scheduled_at: datetime) -> None:
    mark(f"start iso.fails {scheduled_at.isoformat()} pid={os.getpid()}")
    print("about to fail")
    raise ValueError("the partner API blinked")


@cron(ON_REQUEST, id="iso.sleeps", isolation="process", timeout=1)
def sleeps(scheduled_at: datetime) -> None:
    """Blocked in C for an hour (time.sleep), stopped by its one-second timeout."""
    mark(f"start iso.sleeps {scheduled_at.isoformat()} pid={os.getpid()}")
    print("going to sleep", flush=True)
    time.sleep(3600)


@cron(ON_REQUEST, id="iso.deaf", isolation="process", timeout=1)
def deaf(scheduled_at: datetime) -> None:
    """Reads a pipe nobody writes to, with SIGTERM ignored: only SIGKILL stops it."""
    import signal

    mark(f"start iso.deaf {scheduled_at.isoformat()} pid={os.getpid()}")
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    reader, _writer = os.pipe()
    os.read(reader, 1)


@cron(ON_REQUEST, id="iso.segfault", isolation="process")
def segfault(scheduled_at: datetime) -> None:
    mark(f"start iso.segfault {scheduled_at.isoformat()} pid={os.getpid()}")
    ctypes.string_at(0)


@cron(ON_REQUEST, id="iso.exits", isolation="process")
def exits(scheduled_at: datetime) -> None:
    mark(f"start iso.exits {scheduled_at.isoformat()} pid={os.getpid()}")
    sys.stdout.flush()
    os._exit(3)


@cron(ON_REQUEST, id="iso.chatty", isolation="process")
def chatty(scheduled_at: datetime) -> None:
    """Prints three megabytes."""
    mark(f"start iso.chatty {scheduled_at.isoformat()} pid={os.getpid()}")
    chunk = "y" * 1023 + "\n"
    for _ in range(3 * 1024):
        sys.stdout.write(chunk)
    print("the end of the output")


# -- timeouts in a thread (the default isolation) ----------------------------------------


@cron(ON_REQUEST, id="thr.loops", timeout=1)
def loops(scheduled_at: datetime) -> None:
    """Python code that never ends: the TimedOut raised in its thread stops it."""
    mark(f"start thr.loops {scheduled_at.isoformat()} pid={os.getpid()}")
    print("looping", flush=True)
    while True:
        time.sleep(0.05)


@cron(ON_REQUEST, id="thr.blocked", timeout=1)
def blocked(scheduled_at: datetime) -> None:
    """Blocked in C for 4 s: recorded timed out at 1 s, its thread busy until the call returns."""
    mark(f"start thr.blocked {scheduled_at.isoformat()} pid={os.getpid()}")
    time.sleep(4)
    mark(f"end thr.blocked {scheduled_at.isoformat()}")
