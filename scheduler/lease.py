"""The leader lease: one active scheduler per database, standbys ready to take over.

Every ``runapscheduler`` process has a ``SchedulerInstance`` row that it
heartbeats. The active one holds the ``Lease`` row and renews it every
``HEARTBEAT_INTERVAL`` seconds; expiry times come from the database clock, so
the hosts' clocks do not have to agree. Standbys try to take the lease every
second and win it once it has expired.

Locally, leadership ends ``LEASE_SECONDS`` after the start of the last
successful renewal (monotonic clock, which keeps counting while a process is
stopped or its VM paused), so a leader that cannot renew stops starting runs
before anyone else may take over. Even when leadership is briefly split, the
unique (job id, fire time) constraint on ``JobRun`` lets only one process run
each fire time.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.db.models import Case, F, Q, When
from django.db.models.functions import Now
from django.utils import timezone

import scheduler
from scheduler import conf, db, health, signals
from scheduler.models import JobRun, Lease, SchedulerInstance

logger = logging.getLogger(__name__)

# The one lease row.
NAME = health.LEASE_NAME


class Standing(Protocol):
    """What the runtime asks of the lease: may this process start scheduled runs, and
    under which instance id does it write its rows."""

    @property
    def instance_id(self) -> str: ...

    def holds(self) -> bool: ...


class Alone:
    """The standing of a process without a leadership loop (``runjob``, a test): it is on
    its own, so it always may."""

    def __init__(self, instance_id: str = "") -> None:
        self._instance_id = instance_id

    @property
    def instance_id(self) -> str:
        return self._instance_id

    def holds(self) -> bool:
        return True


class Leadership(threading.Thread):
    def __init__(self, on_elected: Callable[[], None], on_demoted: Callable[[], None]) -> None:
        super().__init__(name="scheduler-lease", daemon=True)
        self.instance_id = uuid.uuid4().hex
        self.on_elected = on_elected
        self.on_demoted = on_demoted
        self.stop = threading.Event()
        # Set at shutdown: give the lease up but keep heartbeating while runs finish,
        # so the next leader does not take them for orphans.
        self.stepping_down = threading.Event()
        self.lease_seconds = float(conf.get("LEASE_SECONDS"))
        self.heartbeat = float(conf.get("HEARTBEAT_INTERVAL"))
        self._deadline = 0.0  # monotonic time when our lease ends, as far as we know
        self._leader = False
        # Who held the lease before this process took it (None: nobody, or this process):
        # the detector tells a hand-over from a predecessor that died.
        self.previous_holder: str | None = None
        self._last_heartbeat = 0.0
        # Since when (monotonic) this process has reached the database without a failure.
        self._in_contact_since: float | None = None

    def holds(self) -> bool:
        """True while this process may start scheduled runs (it holds the lease)."""
        return self._leader and time.monotonic() < self._deadline

    # -- the loop ---------------------------------------------------------------

    def run(self) -> None:
        while not self.stop.is_set():
            reached = self.step()
            wait = self.heartbeat if self._leader else min(1.0, self.heartbeat)
            # Wake before the lease could run out, whatever the heartbeat; but while
            # the database is away, try once a second, not in a tight loop.
            if self._leader and reached:
                wait = min(wait, max(0.05, self._deadline - time.monotonic() - 0.5))
            elif not reached:
                wait = min(wait, 1.0)
            self.stop.wait(wait)

    def step(self) -> bool:
        """One round of renewing (or trying to take) the lease; False if the database failed."""
        started = time.monotonic()
        reached = True
        try:
            acquired = False if self.stepping_down.is_set() else self._try_acquire()
            if acquired and self.stepping_down.is_set():
                # step_down() ran while this round renewed the lease: give it up again
                # (whichever release comes last, the lease ends released).
                self._release()
                acquired = False
            if acquired:
                self._deadline = started + self.lease_seconds
            if (
                time.monotonic() - self._last_heartbeat >= self.heartbeat
                or acquired != self._leader
            ):
                self._beat(acquired)
        except db.TRANSIENT as exc:
            reached = False
            db.close_broken()
            if self._in_contact_since is not None:
                logger.warning("Cannot reach the database to renew the lease: %s", exc)
            self._in_contact_since = None
        except Exception:
            logger.exception("Error in the leader lease loop")
        if reached and self._in_contact_since is None:
            self._in_contact_since = started
        self._update_role()
        return reached

    def _update_role(self) -> None:
        leader_now = time.monotonic() < self._deadline and not self.stepping_down.is_set()
        if leader_now and not self._leader:
            self._leader = True
            logger.info("This scheduler (%s) is now the active one.", self.instance_id[:8])
            try:
                self.on_elected()
            except Exception:
                # Not active until taking over succeeds; the next step tries again.
                self._leader = False
                logger.exception("Error while taking over as the active scheduler")
            else:
                signals.send(signals.scheduler_active, type(self), **self._who())
        elif not leader_now and self._leader:
            self._leader = False
            logger.warning("This scheduler (%s) lost the lease: standing by.", self.instance_id[:8])
            self.on_demoted()
            signals.send(signals.lease_lost, type(self), **self._who())

    def _who(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "hostname": conf.HOSTNAME, "pid": os.getpid()}

    def _try_acquire(self) -> bool:
        leases = Lease.objects
        me = self.instance_id
        expires = Now() + timedelta(seconds=self.lease_seconds)
        if not self._leader:
            # (A standby's one read more a round: who holds it, before it may take it.)
            holder = leases.filter(name=NAME).values_list("holder", flat=True).first()
            self.previous_holder = holder if holder != me else None

        def take() -> int:
            return (
                leases.filter(name=NAME)
                .filter(Q(holder=me) | Q(expires_at__lt=Now()))
                .update(
                    holder=me,
                    expires_at=expires,
                    token=Case(When(holder=me, then=F("token")), default=F("token") + 1),
                    acquired_at=Case(When(holder=me, then=F("acquired_at")), default=Now()),
                )
            )

        taken = take()
        if taken:
            return True
        current = leases.filter(name=NAME).first()
        if current is not None:
            if self._holder_died_here(current.holder):
                # A crashed process on this host cannot renew: no need to wait out its lease,
                # nor for the next round (a restart after kill -9 took 1.6 s to become active,
                # most of it that round). Expired a second back: SQLite's Now() has
                # millisecond steps, and the take below compares with a later Now().
                leases.filter(name=NAME, holder=current.holder).update(
                    expires_at=Now() - timedelta(seconds=1)
                )
                logger.info("The previous active scheduler on this host died; taking over now.")
                return bool(take())
            return False
        _, created = leases.get_or_create(
            name=NAME,
            defaults={
                "holder": me,
                "acquired_at": timezone.now(),
                "expires_at": timezone.now() + timedelta(seconds=self.lease_seconds),
            },
        )
        return created

    def _holder_died_here(self, holder: str) -> bool:
        instance = SchedulerInstance.objects.filter(id=holder).first()
        return (
            instance is not None
            and instance.id != self.instance_id
            and instance.hostname == conf.HOSTNAME
            and not pid_alive(instance.pid, instance.started_at)
        )

    def _beat(self, leader: bool) -> None:
        role = SchedulerInstance.Role.ACTIVE if leader else SchedulerInstance.Role.STANDBY
        instances = SchedulerInstance.objects
        updated = instances.filter(id=self.instance_id).update(role=role, heartbeat_at=Now())
        if not updated:
            now = timezone.now()
            instances.create(
                id=self.instance_id,
                hostname=conf.HOSTNAME,
                pid=os.getpid(),
                version=scheduler.__version__,
                role=role,
                started_at=now,
                heartbeat_at=now,
            )
        self._last_heartbeat = time.monotonic()
        if leader and self._may_judge_others():
            recover_orphans(self.lease_seconds)

    def _may_judge_others(self) -> bool:
        """Only after a lease length of contact may silence of others mean they are dead.

        After a database outage every heartbeat is stale; the live instances
        need a lease length to beat again before their runs count as orphans.
        """
        since = self._in_contact_since
        return since is not None and time.monotonic() - since >= self.lease_seconds

    def step_down(self) -> None:
        """At a clean stop: give the lease up at once, so a standby takes over."""
        self.stepping_down.set()
        was_leader, self._leader = self._leader, False
        self._deadline = 0.0
        try:
            self._release()
        except db.TRANSIENT as exc:
            logger.warning("Could not release the lease (it expires by itself): %s", exc)
        if was_leader:
            signals.send(signals.lease_lost, type(self), **self._who())

    def _release(self) -> None:
        Lease.objects.filter(name=NAME, holder=self.instance_id).update(
            expires_at=Now() - timedelta(seconds=1)
        )

    def finish(self) -> None:
        """The process is leaving: record it as stopped."""
        self.stop.set()
        self.join(timeout=5)
        record_stopped(self.instance_id)


def record_stopped(instance_id: str) -> None:
    """The process is leaving: record its instance as stopped."""
    try:
        SchedulerInstance.objects.filter(id=instance_id).update(
            role=SchedulerInstance.Role.STOPPED, stopped_at=Now(), heartbeat_at=Now()
        )
    except db.TRANSIENT as exc:
        logger.warning("Could not record this process as stopped: %s", exc)


# Seconds of slack when comparing a process's start with a row it wrote: the two
# come from different clocks (boot time plus ticks, and the wall clock).
PID_START_TOLERANCE = 1.0


class Presence(threading.Thread):
    """A process that runs jobs outside the schedulers (``runjob``, a Celery worker), as
    they see it.

    It has a ``SchedulerInstance`` row of its own (role ``runjob``) that it
    heartbeats: while it lives, its runs count against their job's
    ``max_instances`` in the active scheduler; if it dies, the active
    scheduler marks its runs interrupted, like those of a scheduler.
    """

    def __init__(
        self,
        role: str = SchedulerInstance.Role.RUNJOB,
        instance_id: str | None = None,
    ) -> None:
        super().__init__(name="scheduler-presence", daemon=True)
        self.instance_id = instance_id or uuid.uuid4().hex
        self.role = role
        self.heartbeat = float(conf.get("HEARTBEAT_INTERVAL"))
        self.stop = threading.Event()

    def start(self) -> None:
        now = timezone.now()
        db.retrying(
            lambda: SchedulerInstance.objects.create(
                id=self.instance_id,
                hostname=conf.HOSTNAME,
                pid=os.getpid(),
                version=scheduler.__version__,
                role=self.role,
                started_at=now,
                heartbeat_at=now,
            ),
            "record this process",
        )
        super().start()

    def run(self) -> None:
        instances = SchedulerInstance.objects
        while not self.stop.wait(self.heartbeat):
            try:
                instances.filter(id=self.instance_id).update(heartbeat_at=Now())
            except db.TRANSIENT as exc:
                db.close_broken()
                logger.warning("Cannot reach the database to send a heartbeat: %s", exc)

    def finish(self) -> None:
        self.stop.set()
        if self.is_alive():
            self.join(timeout=5)
        record_stopped(self.instance_id)


def pid_alive(pid: int, since: datetime | None = None) -> bool:
    """Whether the process ``pid`` of this host is alive and could have written a row at
    ``since``.

    A pid alone is not enough: in a container every scheduler is pid 1, and
    pids are reused. A process that started after the row was written is not
    the one that wrote it. (Where the start time cannot be read, outside
    Linux, the pid alone decides.)
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if since is None:
        return True
    started = process_start(pid)
    if started is None:
        return True
    return started <= since.timestamp() + PID_START_TOLERANCE


def process_start(pid: int) -> float | None:
    """When the process ``pid`` started (seconds since the epoch), from /proc; None where
    that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            data = stat.read()
        with open("/proc/uptime", "rb") as uptime_file:
            uptime = float(uptime_file.read().split()[0])
        # Field 22, counted after the command name (which may hold spaces and parentheses).
        ticks = int(data[data.rindex(b")") + 2 :].split()[19])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def recover_orphans(lease_seconds: float) -> int:
    """Mark runs whose scheduler stopped heartbeating as interrupted, and it as stopped."""
    stale = Now() - timedelta(seconds=lease_seconds)
    instances = SchedulerInstance.objects
    alive = instances.filter(heartbeat_at__gte=stale, stopped_at__isnull=True)
    orphans = (
        JobRun.objects.filter(status=JobRun.Status.RUNNING)
        .exclude(instance="")
        .exclude(instance__in=alive.values("id"))
    )
    count = orphans.update(
        status=JobRun.Status.INTERRUPTED,
        finished_at=Now(),
        exception="Interrupted: the scheduler instance running it stopped sending heartbeats.",
    )
    if count:
        logger.warning("Marked %d run(s) of a dead scheduler instance as interrupted.", count)
    # Dead instances must not look active in the admin forever.
    instances.filter(heartbeat_at__lt=stale, stopped_at__isnull=True).exclude(
        role=SchedulerInstance.Role.STOPPED
    ).update(role=SchedulerInstance.Role.STOPPED)
    return count
