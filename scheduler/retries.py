"""Retries: when a failed run is tried again, and after how long.

A job declared with ``retries=N`` that fails (an exception matching
``retry_on``, a timeout, or a crash of its child process) is tried again
up to N times. Each attempt is a run row of its own (``attempt`` 2, 3, ...;
``retry_of`` the first attempt's id, trigger ``retry``). The attempt to come
is stored before the failed one's result, as a ``queued`` row whose
``scheduled_at`` is its due time, so it survives a restart or a failover: the
active scheduler claims it from the queue when it is due, as it claims a
run-now request (``control.Control.start_queued_runs``), so with several
schedulers it runs once. A ``runjob`` process files its retries for itself
and waits for them.

The wait before attempt ``n + 1`` is Celery's ``retry_backoff``:
``min(cap, base * 2 ** (n - 1))`` seconds, and with ``jitter`` a random
time between none and that ("full jitter", as Celery's ``retry_jitter``),
so that many jobs failing together do not come back together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

# The most attempts a job may ask for beyond the first: every attempt is a history row.
MAX_RETRIES = 100


@dataclass(frozen=True)
class Backoff:
    """How long a failed run waits before its next attempt (see the module docstring)."""

    base: float = 1.0
    cap: float = 600.0
    jitter: bool = True

    def delay(self, attempt: int, rand: random.Random | None = None) -> float:
        """Seconds between the end of attempt ``attempt`` and the start of the next."""
        wait = min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))
        if self.jitter:
            wait = (rand or random).uniform(0.0, wait)
        return wait

    def as_json(self) -> dict[str, Any]:
        return {"base": self.base, "cap": self.cap, "jitter": self.jitter}


DEFAULT_BACKOFF = Backoff()


def retry_wanted(
    retries: int, attempt: int, status: str, retryable: bool | None, default_on: bool
) -> bool:
    """Whether a run that ended ``status`` as attempt ``attempt`` is tried again.

    ``retryable`` is what the run said of its own failure: True or False for an
    exception (``retry_on`` matched or not) and for a timeout (always True); None
    for a crash of its child process, which raised nothing that ``retry_on`` could
    match, and is retried only when ``retry_on`` was left at its default
    (``default_on``).
    """
    if attempt > retries or status not in ("failed", "timed_out"):
        return False
    return default_on if retryable is None else retryable
