"""Check-ins: each run of a job told, as it starts and as it ends, to a monitor outside.

* Healthchecks-style pings for jobs declared with ``ping_url=``: ``<url>/start`` when
  a run starts, ``<url>`` when it succeeds, ``<url>/fail`` when it fails, times out or
  is interrupted (with what it raised and the end of its output as the body, at most
  10 kB). Healthchecks.io, its self-hosted version and the services that copy its
  URL scheme then alert on a failure, and on the absence of a success (which is how a
  scheduler that is down is noticed: nothing here can tell that).
* Sentry Crons check-ins for every job with a schedule Sentry can read, when
  ``SCHEDULER["ALERTS"]["SENTRY_CRONS"]`` is True and ``sentry_sdk`` is installed and
  initialised: ``in_progress`` at the start, ``ok`` or ``error`` with the duration at
  the end. Each check-in carries the monitor's configuration, generated from the
  job's schedule (``monitor_config``), so Sentry's monitor never drifts from the code.

Fire times that did not run (``missed``, ``skipped``) send nothing: both monitors
notice a run that does not happen on their own, and a catch-up after a long outage
would otherwise send a burst of failures.

A ``CheckIns`` holds a bounded queue and one thread that sends: the signal receivers
(``connect``) only put a few values in the queue, so a monitor that is slow or down
never delays a run. A ping that fails is tried again (3 tries over about 8 s, not
after a 4xx answer), then logged and given up. Both ends of a run carry the same id,
made from the run's id (a UUID, as both services require): Healthchecks' ``rid`` and
Sentry's ``check_in_id`` pair them, even when the end is reported by another process
than the start.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import re
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from scheduler import conf, outbound, registry, signals
from scheduler.crontab import MACROS
from scheduler.outbound import DeliveryError
from scheduler.text import describe_exception

if TYPE_CHECKING:
    from scheduler.models import JobRun
    from scheduler.registry import JobSpec

logger = logging.getLogger(__name__)

# Final statuses and what a monitor is told of them; others (missed, skipped) send nothing.
SUCCEEDED = "succeeded"
FAILED_STATUSES = frozenset({"failed", "timed_out", "interrupted"})
# The most bytes of a failure's body (Healthchecks keeps 100 kB of one).
BODY_LIMIT = 10_240
# Namespace of the run ids sent to monitors (uuid5 of "<job id>:<run id>"): fixed, so
# that every process makes the same id for a run.
RUN_NAMESPACE = uuid.UUID("6f1c3a0e-6a0b-4a59-9c55-8f5f0a1f2c7d")
# Sentry's limits: a monitor slug's length, and the most minutes of a check-in margin
# and of a run's maximum runtime (28 days).
SLUG_LIMIT = 50
MAX_MINUTES = 40_320
# Seconds between two log lines about the same trouble (a monitor down, a full queue).
LOG_EVERY = 60.0


def run_uuid(job_id: str, run_id: int | None) -> uuid.UUID:
    """The id both ends of a run are reported with, the same in every process."""
    return uuid.uuid5(RUN_NAMESPACE, f"{job_id}:{run_id}")


def ping_address(url: str, suffix: str, rid: uuid.UUID) -> str:
    """``url`` + ``suffix`` ("", "/start", "/fail"), its query kept, with ``rid=``."""
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode({"rid": str(rid)})) if q)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix, query=query))


def failure_body(run: JobRun) -> bytes:
    """What a failed run says of itself: its status and exception, the end of its
    traceback and of its output; at most ``BODY_LIMIT`` bytes of UTF-8."""
    parts = [f"Run #{run.pk} of {run.job_id}: {run.status}"]
    if run.exception:
        parts.append(str(run.exception)[:2000])
    if run.traceback:
        parts.append(str(run.traceback)[-4000:])
    if run.output:
        parts.append("Output (the end):\n" + str(run.output)[-4000:])
    data = "\n\n".join(parts).encode("utf-8", "backslashreplace")
    return data[:BODY_LIMIT].decode("utf-8", "ignore").encode("utf-8")


def monitor_slug(job_id: str) -> str:
    """The job id as a Sentry monitor slug: lowercase, [a-z0-9_-], at most 50 characters
    (a longer one keeps its start and ends with a hash of the whole id)."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", job_id.lower()).strip("-") or "job"
    if len(slug) > SLUG_LIMIT:
        digest = uuid.uuid5(RUN_NAMESPACE, job_id).hex[:8]
        slug = slug[: SLUG_LIMIT - 9].rstrip("-") + "-" + digest
    return slug


def _minutes(seconds: float | None) -> int:
    if seconds is None:
        return MAX_MINUTES  # no limit: as much as Sentry takes
    return max(1, min(MAX_MINUTES, math.ceil(seconds / 60)))


def monitor_config(spec: JobSpec) -> dict[str, Any] | None:
    """Sentry's monitor configuration of a job, from its schedule; None when Sentry's
    schedules cannot say it (seconds, APScheduler's "last fri", no schedule)."""
    schedule = _sentry_schedule(spec)
    if schedule is None:
        return None
    jitter = spec.jitter or 0
    grace = spec.effective_grace_time
    return {
        "schedule": schedule,
        "timezone": spec.timezone,
        # A run may start this late (misfire_grace_time, and its jitter) and still run.
        "checkin_margin": _minutes(None if grace is None else grace + jitter),
        "max_runtime": _minutes(spec.effective_timeout),
    }


_INTERVAL_UNITS = (("week", 604_800), ("day", 86_400), ("hour", 3_600), ("minute", 60))


def _sentry_schedule(spec: JobSpec) -> dict[str, Any] | None:
    if spec.kind == "interval":
        seconds = sum(float(v) * registry.UNIT_SECONDS[k] for k, v in spec.schedule.items())
        for unit, size in _INTERVAL_UNITS:
            if seconds >= size and seconds % size == 0:
                return {"type": "interval", "value": int(seconds // size), "unit": unit}
        return None  # seconds, or a fraction of a minute: Sentry counts in minutes
    if spec.kind != "cron":
        return None
    if "crontab" in spec.schedule:
        text = str(spec.schedule["crontab"])
        return {
            "type": "crontab",
            "value": " ".join(MACROS.get(text.strip().lower(), text).split()),
        }
    crontab = _as_crontab(spec)
    return None if crontab is None else {"type": "crontab", "value": crontab}


# APScheduler's cron fields as crontab fields: (name, highest value).
_CRONTAB_FIELDS = (("minute", 59), ("hour", 23), ("day", 31), ("month", 12))
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab's order


def _as_crontab(spec: JobSpec) -> str | None:
    """A job declared with APScheduler's cron fields, as a 5-field crontab; None when
    it fires at a second other than 0, in some years or weeks only, or on days cron
    cannot name."""
    try:
        fields = {field.name: field for field in spec.make_trigger().fields}
    except Exception:  # noqa: BLE001 - a trigger of another shape: not one cron can say
        return None
    if str(fields["second"]) != "0" or str(fields["year"]) != "*" or str(fields["week"]) != "*":
        return None
    parts: dict[str, str] = {}
    for name, highest in _CRONTAB_FIELDS:
        text = _field_text(fields[name], highest)
        if text is None:
            return None
        parts[name] = text
    weekdays = _weekdays(fields["day_of_week"])
    if weekdays is None:
        return None
    # APScheduler fires when the day and the weekday both match; cron when either does.
    if parts["day"] != "*" and weekdays != "*":
        return None
    return f"{parts['minute']} {parts['hour']} {parts['day']} {parts['month']} {weekdays}"


def _field_text(field: Any, highest: int) -> str | None:
    texts = []
    for expr in field.expressions:
        kind = type(expr).__name__
        step = getattr(expr, "step", None)
        if kind == "AllExpression":
            texts.append(f"*/{step}" if step else "*")
        elif kind in ("RangeExpression", "MonthRangeExpression"):
            first, last = expr.first, expr.last
            if last is None:
                last = highest if step else first
            text = str(first) if first == last else f"{first}-{last}"
            texts.append(f"{text}/{step}" if step else text)
        else:
            return None  # "last", "1st mon": no crontab says them
    return ",".join(texts)


def _weekdays(field: Any) -> str | None:
    days: set[int] = set()  # APScheduler's numbers: 0 is Monday
    for expr in field.expressions:
        kind = type(expr).__name__
        step = getattr(expr, "step", None) or 1
        if kind == "AllExpression":
            if step == 1:
                return "*" if len(field.expressions) == 1 else None
            days.update(range(0, 7, step))
        elif kind in ("RangeExpression", "WeekdayRangeExpression"):
            last = expr.last if expr.last is not None else (6 if step > 1 else expr.first)
            days.update(range(expr.first, last + 1, step))
        else:
            return None
    if len(days) == 7:
        return "*"
    return ",".join(_WEEKDAYS[d] for d in sorted((d + 1) % 7 for d in days))


def check_sentry() -> str | None:
    """What stops Sentry Crons check-ins that the settings ask for, or None: for a system
    check (``manage.py check``) and for the log at start."""
    if not conf.alerts()["SENTRY_CRONS"]:
        return None
    try:
        import sentry_sdk
    except ImportError:
        return (
            "SCHEDULER['ALERTS']['SENTRY_CRONS'] is True, but sentry_sdk is not installed: "
            'install it (pip install "django-scheduler-app[sentry]") or set it to False.'
        )
    if not hasattr(sentry_sdk, "is_initialized"):
        return (
            "SCHEDULER['ALERTS']['SENTRY_CRONS'] needs sentry-sdk 2 or later; "
            f"sentry-sdk {getattr(sentry_sdk, 'VERSION', '?')} is installed."
        )
    return None


@dataclass(frozen=True)
class _Ping:
    job_id: str
    rid: uuid.UUID
    url: str
    body: bytes | None
    start: bool  # the start of a run (sent before its end, or not at all)
    tries: int = 0


@dataclass(frozen=True)
class _SentryCheckIn:
    job_id: str
    slug: str
    check_in_id: str
    status: str
    duration: float | None
    config: dict[str, Any]


_Item = _Ping | _SentryCheckIn


class CheckIns:
    """Sends the check-ins of the runs of this process, from a thread of its own.

    ``start()`` starts the thread; ``connect(checkins)`` hears the runs
    (``signals.run_started``, ``run_finished``); ``stop(deadline)`` sends what is
    queued until ``deadline`` (a ``time.monotonic()`` value), then returns.
    """

    def __init__(
        self,
        *,
        sentry: bool | None = None,
        jobs: Mapping[str, JobSpec] | None = None,
        maxsize: int = 10_000,
        timeout: float = 5.0,
        backoff: tuple[float, ...] = (2.0, 6.0),
    ) -> None:
        # Sentry Crons: ALERTS["SENTRY_CRONS"] by default, and only with sentry_sdk there.
        wanted = conf.alerts()["SENTRY_CRONS"] if sentry is None else sentry
        problem = check_sentry() if wanted else None
        if problem:
            logger.warning("%s", problem)
        self.sentry = bool(wanted) and problem is None
        self.jobs = registry.registry if jobs is None else jobs
        self.timeout = timeout
        self.backoff = backoff  # seconds before each try again; its length + 1 tries
        self._items: deque[_Item] = deque()
        self._maxsize = maxsize
        self._retries: list[tuple[float, int, _Ping]] = []  # a heap by due time
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._deadline = math.inf
        # Runs whose end was sent: a start tried again after it is dropped, not sent late.
        self._ended: OrderedDict[uuid.UUID, None] = OrderedDict()
        # Monitor configs by job (with the spec they were made of), and jobs told once
        # that Sentry cannot monitor them.
        self._configs: dict[str, tuple[JobSpec, dict[str, Any] | None]] = {}
        self._said: dict[str, float] = {}
        self.dropped = 0  # items dropped for a full queue, in all
        self.given_up = 0  # pings given up after their last try

    # -- the owner's side ---------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._deadline = math.inf
            self._thread = threading.Thread(
                target=self._loop, name="scheduler-checkins", daemon=True
            )
            self._thread.start()

    def stop(self, deadline: float) -> None:
        """Send what is queued until ``deadline`` (``time.monotonic()``); drop the rest."""
        with self._cond:
            self._stopping = True
            self._deadline = deadline
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self.sentry:
            self._flush_sentry(max(0.0, deadline - time.monotonic()))

    def pending(self) -> int:
        """Check-ins queued or waiting to be tried again."""
        with self._cond:
            return len(self._items) + len(self._retries)

    # -- the receivers (the scheduler's threads: quick, and never raise) -----------------

    def run_started(self, sender: Any = None, run: JobRun | None = None, **kwargs: Any) -> None:
        try:
            if run is not None:
                self._heard(run, start=True)
        except Exception as error:  # noqa: BLE001 - a run must not fail for its check-in
            self._say("receiver", "Check-ins: a run start was not queued: %s", error)

    def run_finished(self, sender: Any = None, run: JobRun | None = None, **kwargs: Any) -> None:
        try:
            if run is not None:
                self._heard(run, start=False)
        except Exception as error:  # noqa: BLE001
            self._say("receiver", "Check-ins: a run end was not queued: %s", error)

    def _heard(self, run: JobRun, start: bool) -> None:
        if not start and run.status != SUCCEEDED and run.status not in FAILED_STATUSES:
            return  # missed, skipped: nothing ran (see the module's docstring)
        spec = self.jobs.get(run.job_id)
        if spec is None:
            return  # a job no longer declared
        ping = spec.ping_url
        if not ping and not self.sentry:
            return
        rid = run_uuid(run.job_id, run.pk)
        if ping:
            if start:
                self._put(_Ping(spec.id, rid, ping_address(ping, "/start", rid), None, True))
            elif run.status == SUCCEEDED:
                self._put(_Ping(spec.id, rid, ping_address(ping, "", rid), None, False))
            else:
                url = ping_address(ping, "/fail", rid)
                self._put(_Ping(spec.id, rid, url, failure_body(run), False))
        if self.sentry:
            config = self._config(spec)
            if config is not None:
                status = "in_progress" if start else "ok" if run.status == SUCCEEDED else "error"
                self._put(
                    _SentryCheckIn(
                        spec.id,
                        monitor_slug(spec.id),
                        rid.hex,
                        status,
                        None if start else run.duration,
                        config,
                    )
                )

    def _config(self, spec: JobSpec) -> dict[str, Any] | None:
        cached = self._configs.get(spec.id)
        if cached is not None and cached[0] is spec:
            return cached[1]
        config = monitor_config(spec)
        self._configs[spec.id] = (spec, config)
        if config is None:
            logger.info(
                "Sentry Crons: job %s is not monitored; Sentry's schedules cannot say %s.",
                spec.id,
                f"its schedule ({spec.schedule_text})" if not spec.on_demand else "@job",
            )
        return config

    def _put(self, item: _Item) -> None:
        with self._cond:
            if len(self._items) >= self._maxsize:
                self._items.popleft()  # the oldest goes: the latest say more of now
                self.dropped += 1
                self._say(
                    "full",
                    "Check-ins: the queue is full (%d); the oldest are dropped (%d so far). "
                    "Is a monitor down or slow?",
                    self._maxsize,
                    self.dropped,
                )
            self._items.append(item)
            self._cond.notify()

    # -- the sending thread ------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            try:
                if isinstance(item, _Ping):
                    self._ping(item)
                else:
                    self._checkin(item)
            except Exception as error:  # noqa: BLE001 - the thread must go on
                self._say("loop", "Check-ins: sending one raised: %s", describe_exception(error))

    def _next(self) -> _Item | None:
        with self._cond:
            while True:
                now = time.monotonic()
                if self._stopping and now >= self._deadline:
                    self._drop_left()
                    return None
                if self._retries and self._retries[0][0] <= now:
                    return heapq.heappop(self._retries)[2]
                if self._items:
                    return self._items.popleft()
                if self._stopping and (not self._retries or self._retries[0][0] > self._deadline):
                    self._drop_left()
                    return None
                wait = self._retries[0][0] - now if self._retries else None
                if self._stopping:
                    wait = min(wait if wait is not None else math.inf, self._deadline - now)
                self._cond.wait(wait)

    def _drop_left(self) -> None:
        left = len(self._items) + len(self._retries)
        if left:
            logger.warning("Check-ins: %d not sent before the scheduler stopped.", left)
        self._items.clear()
        self._retries.clear()

    def _ping(self, ping: _Ping) -> None:
        if ping.start and ping.rid in self._ended:
            return  # its end went first: a start now would say the run is going again
        if not ping.start:
            self._ended[ping.rid] = None
            while len(self._ended) > 10_000:
                self._ended.popitem(last=False)
        timeout = self.timeout
        if self._stopping:
            timeout = max(0.1, min(timeout, self._deadline - time.monotonic()))
        try:
            outbound.send(
                ping.url,
                ping.body,
                timeout,
                content_type="text/plain; charset=utf-8",
                method="POST" if ping.body is not None else "GET",
            )
        except DeliveryError as error:
            if error.retry and ping.tries < len(self.backoff):
                due = time.monotonic() + self.backoff[ping.tries]
                with self._cond:
                    heapq.heappush(
                        self._retries,
                        (due, next(self._order), _replace_tries(ping, ping.tries + 1)),
                    )
                return
            self.given_up += 1
            self._say(
                f"ping {outbound.where(ping.url)}",
                "Check-ins: the ping of job %s to %s was given up after %d tries: %s "
                "(%d given up so far).",
                ping.job_id,
                outbound.where(ping.url),
                ping.tries + 1,
                error,
                self.given_up,
            )

    def _checkin(self, item: _SentryCheckIn) -> None:
        import sentry_sdk
        from sentry_sdk.crons import capture_checkin

        if not sentry_sdk.is_initialized():
            self._say(
                "sentry init",
                "Sentry Crons: sentry_sdk is not initialised (sentry_sdk.init in the "
                "settings); the check-ins of job %s are not sent.",
                item.job_id,
            )
            return
        capture_checkin(
            monitor_slug=item.slug,
            check_in_id=item.check_in_id,
            status=item.status,
            duration=item.duration,
            monitor_config=item.config,  # type: ignore[arg-type]  # a TypedDict of sentry's
        )

    def _flush_sentry(self, timeout: float) -> None:
        try:
            import sentry_sdk

            if sentry_sdk.is_initialized() and timeout > 0:
                sentry_sdk.flush(timeout=timeout)
        except Exception as error:  # noqa: BLE001 - a stop must finish
            logger.warning("Sentry Crons: flushing at stop raised: %s", describe_exception(error))

    def _say(self, what: str, message: str, *args: Any) -> None:
        """Log a warning about ``what``, at most once every ``LOG_EVERY`` seconds."""
        now = time.monotonic()
        last = self._said.get(what)
        if last is not None and now - last < LOG_EVERY:
            return
        self._said[what] = now
        logger.warning(message, *args)


def _replace_tries(ping: _Ping, tries: int) -> _Ping:
    return _Ping(ping.job_id, ping.rid, ping.url, ping.body, ping.start, tries)


def _uid(checkins: CheckIns, name: str) -> str:
    return f"scheduler.checkins.{id(checkins)}.{name}"


_RECEIVERS: tuple[tuple[str, Callable[[CheckIns], Any]], ...] = (
    ("run_started", lambda c: c.run_started),
    ("run_finished", lambda c: c.run_finished),
)


def connect(checkins: CheckIns) -> None:
    """Send ``checkins`` every run of this process (``signals.run_started``, ``run_finished``)."""
    for name, receiver in _RECEIVERS:
        getattr(signals, name).connect(
            receiver(checkins), weak=False, dispatch_uid=_uid(checkins, name)
        )


def disconnect(checkins: CheckIns) -> None:
    for name, _ in _RECEIVERS:
        getattr(signals, name).disconnect(dispatch_uid=_uid(checkins, name))
