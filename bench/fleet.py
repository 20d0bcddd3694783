"""The fleet scenarios' processes: a throwaway Redis, Celery workers, and the scheduler under
test (``celery beat`` or this project's ``runapscheduler`` with ``executor="celery"``).

One measured window (``run_window``): a fresh Redis server and a fresh database; the
workers (the same command, concurrency and environment for both systems) and the
scheduler started; ``warmup`` seconds after all are ready, a window of ``duration`` whole
seconds in which every job fires every second. ``drain`` seconds after the window (its
last second's messages sent) the scheduler is stopped (SIGTERM), then the workers are given
until ``drain_timeout`` to empty the broker: the queue and Redis' unacknowledged messages
empty, this project's rows of the window all final, and no new run for 0.5 s.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

from bench.common import (
    PYTHON,
    BenchError,
    Proc,
    child_env,
    cpu_seconds,
    machine_cpu_busy,
    percentile,
    sleep_until,
)
from bench.databases import Database

SYSTEMS = ("beat", "ours")
# What the workers and Beat print once ready (bench/fleet_app.py; not imported here: it
# sets Django up).
READY = "BENCH FLEET READY"
# This project's statuses that end a run (scheduler/models.py JobRun.Status).
FINAL = ("succeeded", "failed", "missed", "skipped", "timed_out", "interrupted", "cancelled")
NOT_FINAL = ("queued", "running")
APP = "bench.fleet_app"
# Seconds a scheduler gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Redis:
    """Debian's redis-server on a free loopback port, no persistence (as tests/proc/workers.py)."""

    def __init__(self, workdir: Path, tag: str) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise BenchError("redis-server not found (apt-get install redis-server)")
        self.port = free_port()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(workdir)]
        self.proc = Proc("redis", argv, child_env(), workdir / f"{tag}.redis.log")
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client().ping():
                    return
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    self.proc.kill()
                    raise BenchError(f"redis-server did not answer:\n{self.proc.tail()}") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def backlog(self) -> int:
        """Messages not yet taken by a worker (the default queue) or taken but not
        acknowledged (kombu's ``unacked`` hash)."""
        client = self.client()
        try:
            return int(client.llen("celery")) + int(client.hlen("unacked"))
        finally:
            client.close()

    def result_keys(self) -> int:
        """Task results stored in Redis (Celery's result backend keys)."""
        client = self.client()
        try:
            return sum(1 for _ in client.scan_iter("celery-task-meta-*", count=1000))
        finally:
            client.close()

    def stop(self) -> None:
        self.proc.kill()


def worker_argv(name: str, concurrency: int) -> list[str]:
    """The same worker command for both systems: prefork pool, Celery's default log level
    (WARNING: no line per task), no gossip/mingle/heartbeat events between workers."""
    argv = [PYTHON, "-m", "celery", "-A", APP, "worker", "-n", f"{name}@%h"]
    argv += ["--pool", "prefork", "--concurrency", str(concurrency)]
    return argv + ["--without-gossip", "--without-mingle", "--without-heartbeat"]


def scheduler_argv(system: str, workdir: Path, tag: str) -> list[str]:
    if system == "beat":
        # Its default scheduler (PersistentScheduler, the schedule's state in a shelve file).
        return [PYTHON, "-m", "celery", "-A", APP, "beat", "-s", str(workdir / f"{tag}.beat")]
    return [PYTHON, "manage.py", "runapscheduler"]


READY_LINE = {"beat": READY, "ours": "Active scheduler now"}


class Group:
    """CPU seconds of a process and its children (a worker and its pool processes)."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs = procs

    def cpu(self) -> float:
        total = 0.0
        for proc in self.procs:
            for pid in (proc.pid, *proc.children()):
                total += cpu_seconds(pid) or 0.0
        return total


def _observations(path: Path, start: float, end: float) -> tuple[dict, int]:
    """(job, fire time in µs) -> (first start, its publish time) inside [start, end), and
    how many runs of a (job, fire time) were seen more than once."""
    seen: dict[tuple[int, int], tuple[float, float | None]] = {}
    repeats = 0
    try:
        text = path.read_text()
    except FileNotFoundError:
        return seen, 0
    lo, hi = round(start * 1e6), round(end * 1e6)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        key = (int(parts[0]), round(float(parts[1]) * 1e6))
        if not lo <= key[1] < hi:
            continue
        began, sent = float(parts[2]), None if parts[3] == "-" else float(parts[3])
        if key in seen:
            repeats += 1
            if began < seen[key][0]:
                seen[key] = (began, sent)
        else:
            seen[key] = (began, sent)
    return seen, repeats


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as file:
            return sum(1 for _ in file)
    except FileNotFoundError:
        return 0


def _rows(database: Database, start: float, end: float) -> dict[str, int]:
    """This project's rows of the window's fire times, by status (succeeded ones split by
    whether a worker's host name is recorded)."""
    p = "?" if database.kind == "sqlite" else "%s"
    rows = database.query(
        "SELECT status, hostname <> '', count(*) FROM scheduler_jobrun "
        f"WHERE scheduled_at >= {p} AND scheduled_at < {p} GROUP BY status, hostname <> ''",
        (database.ts(start), database.ts(end)),
    )
    found: dict[str, int] = {}
    for status, on_worker, count in rows:
        found[status] = found.get(status, 0) + count
        if status == "succeeded" and on_worker:
            found["succeeded_on_worker"] = found.get("succeeded_on_worker", 0) + count
    return found


def run_window(
    ctx: Any,
    system: str,
    database: Database,
    scenario: str,
    jobs: int,
    duration: int,
) -> dict[str, Any]:
    """One system, one window; the metrics of bench/scenarios/fleet.py."""
    args = ctx.args
    tag = ctx.tag(scenario, system, database.kind)
    obs = ctx.workdir / f"{tag}.obs"
    redis = Redis(ctx.workdir, tag)
    procs: list[Proc] = []
    try:
        env = child_env(
            DJANGO_SETTINGS_MODULE="bench.fleet_settings",
            DATABASE_URL=database.url,
            BENCH_BROKER=redis.url,
            BENCH_SCENARIO=scenario,
            BENCH_JOBS=jobs,
            BENCH_OBS=obs,
        )
        workers = [
            Proc(
                f"worker{n}",
                worker_argv(f"bench{n}", args.fleet_concurrency),
                env,
                ctx.workdir / f"{tag}.worker{n}.log",
            )
            for n in range(args.fleet_workers)
        ]
        procs += workers
        sched_env = {**env, "BENCH_BEAT_JOBS": str(jobs)} if system == "beat" else env
        scheduler = Proc(
            system,
            scheduler_argv(system, ctx.workdir, tag),
            sched_env,
            ctx.workdir / f"{tag}.{system}.log",
        )
        procs.append(scheduler)
        for worker in workers:
            worker.wait_line(READY, args.start_timeout)
        ready = scheduler.wait_line(READY_LINE[system], args.start_timeout)
        fleet = Group(workers)

        w0 = math.ceil(time.time()) + args.warmup
        w1 = w0 + duration
        sleep_until(w0)
        cpu0, wcpu0, busy0 = scheduler.cpu(), fleet.cpu(), machine_cpu_busy()
        sleep_until(w1)
        cpu1, wcpu1, busy1 = scheduler.cpu(), fleet.cpu(), machine_cpu_busy()
        sleep_until(w1 + args.drain)
        alive = scheduler.popen.poll() is None
        rss = scheduler.peak_rss()
        stop0 = time.monotonic()
        # This project records what it claimed and did not send before it exits: let it.
        scheduler.stop(timeout=STOP_TIMEOUT)
        stop_s = time.monotonic() - stop0

        # The workers catch up: nothing left in the broker, every row of the window final,
        # no new run for half a second.
        drained, count, quiet_since = False, -1, time.monotonic()
        deadline = stop0 + args.fleet_drain_timeout
        while time.monotonic() < deadline:
            now_count = _lines(obs)
            if now_count != count:
                count, quiet_since = now_count, time.monotonic()
            open_rows = 0
            if system == "ours":
                rows = _rows(database, w0, w1)
                open_rows = sum(rows.get(s, 0) for s in NOT_FINAL)
            if redis.backlog() == 0 and open_rows == 0 and time.monotonic() - quiet_since >= 0.5:
                drained = True
                break
            time.sleep(0.25)
        drain_s = time.monotonic() - stop0
        result_keys = redis.result_keys()
        worker_deaths = sum(1 for w in workers if w.popen.poll() is not None)
        worker_tracebacks = sum(w.count("Traceback") for w in workers)
    finally:
        # Measured: killed, not shut down (a worker's warm shutdown takes seconds), the
        # pool processes with their worker.
        pool = [pid for proc in procs for pid in proc.children()]
        for proc in reversed(procs):
            proc.kill()
        for pid in pool:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        redis.stop()

    seen, repeats = _observations(obs, w0, w1)
    expected = jobs * duration
    lateness = [(began - fire / 1e6) * 1000 for (_, fire), (began, _) in seen.items()]
    dispatch = [
        (sent - fire / 1e6) * 1000 for (_, fire), (_, sent) in seen.items() if sent is not None
    ]
    cpu = cpu1 - cpu0 if alive and cpu0 is not None and cpu1 is not None else None
    total = busy1[1] - busy0[1]
    metrics: dict[str, Any] = {
        "ready_s": ready,
        "expected": expected,
        "seen": len(seen),
        "missed": expected - len(seen),
        "repeats": repeats,
        "late_p50_ms": percentile(lateness, 50),
        "late_p99_ms": percentile(lateness, 99),
        "late_max_ms": max(lateness) if lateness else None,
        "dispatch_p50_ms": percentile(dispatch, 50),
        "dispatch_p99_ms": percentile(dispatch, 99),
        "cpu_s": cpu,
        "cpu_pct": 100 * cpu / duration if cpu is not None else None,
        "workers_cpu_pct": 100 * (wcpu1 - wcpu0) / duration,
        "machine_busy_pct": 100 * (busy1[0] - busy0[0]) / total if total else None,
        "peak_rss_mb": rss,
        "result_keys": result_keys,
        "stop_s": stop_s,
        "drain_s": drain_s,
        "drained": 1 if drained else 0,
        "died": 0 if alive else 1,
        "worker_deaths": worker_deaths,
        "tracebacks": scheduler.count("Traceback") + worker_tracebacks,
    }
    if system == "beat":
        # Beat keeps no outcome: the scheduler side knows only what Celery's result backend
        # holds, and none is configured (measured: the result keys in Redis).
        metrics["outcomes_recorded"] = result_keys
    else:
        rows = _rows(database, w0, w1)
        final = sum(rows.get(s, 0) for s in FINAL)
        metrics.update(
            {
                "outcomes_recorded": rows.get("succeeded_on_worker", 0),
                "rows": sum(v for k, v in rows.items() if k != "succeeded_on_worker"),
                "rows_final": final,
                "rows_not_final": sum(rows.get(s, 0) for s in NOT_FINAL),
                "rows_missed": rows.get("missed", 0) + rows.get("skipped", 0),
                # Every fire time of the window has its row, final, and ran once.
                "history_complete": 1 if final == expected and repeats == 0 else 0,
            }
        )
        metrics["history_by_status"] = {k: v for k, v in rows.items()}
    if not alive:
        metrics["died_with"] = scheduler.tail(3)
    return metrics
