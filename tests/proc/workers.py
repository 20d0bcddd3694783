"""The worker fleets of the fleet tests: a throwaway Redis server (the Celery broker),
Celery workers, and django-tasks-db's ``db_worker``.

``RedisServer`` runs Debian's ``redis-server`` on a free loopback port, with no
persistence, until ``stop``; ``stop``/``start`` again make a broker outage.
``start_worker`` starts a real ``celery worker`` (prefork pool) on the tests'
Celery app (tests/proc/celery_app.py), with the environment of a scheduler
process of the same ``SchedulerEnv``, in a session of its own so that a test
can kill it with its pool processes, as a machine that dies.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.proc.harness import ROOT, SchedulerEnv, SchedulerProcess, wait_for

NOT_FOUND = "Redis server not found (install the redis-server Debian package)"
READY_LINE = "ready."


class RedisUnavailable(RuntimeError):
    """Redis cannot be run here (a test skips, saying why)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server") or (
            "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
        )
        if binary is None:
            raise RedisUnavailable(NOT_FOUND)
        self.binary = binary
        self.dir = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 - the server's, until it ends
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RedisUnavailable(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class WorkerProcess(SchedulerProcess):
    """A ``celery worker`` subprocess (its own session: ``kill_all`` takes its pool too)."""

    def kill_all(self) -> None:
        """kill -9 the worker and its pool processes, as a machine that dies."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)

    def kill(self) -> None:
        if self.alive():
            self.kill_all()


def _spawn(
    env: SchedulerEnv, log_name: str, argv: list[str], environment: dict[str, str]
) -> WorkerProcess:
    """A worker subprocess in a session of its own, its output in ``log_name``."""
    env._logs += 1
    log_path = env.dir / log_name
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    worker = WorkerProcess(popen, log_path)
    env.processes.append(worker)
    return worker


def start_worker(
    env: SchedulerEnv,
    broker: str,
    name: str,
    modules: str,
    concurrency: int = 2,
    **overrides: Any,
) -> WorkerProcess:
    """A real Celery worker named ``name`` on the tests' app, ready to take runs."""
    argv = [sys.executable, "-m", "celery", "-A", "tests.proc.celery_app", "worker"]
    argv += ["-n", f"{name}@%h", "--pool", "prefork", "--concurrency", str(concurrency)]
    argv += ["--loglevel", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    environment = env.env(modules, PROC_BROKER=broker, **overrides)
    worker = _spawn(env, f"worker-{name}.log", argv, environment)
    wait_for(lambda: _ready(worker), 60, f"worker {name} ready")
    return worker


def _ready(worker: WorkerProcess) -> bool:
    if worker.popen.poll() is not None:
        raise AssertionError(
            f"celery worker exited with {worker.popen.returncode}:\n{worker.log()}"
        )
    return READY_LINE in worker.log()


def start_db_worker(env: SchedulerEnv, name: str, modules: str, **overrides: Any) -> WorkerProcess:
    """django-tasks-db's ``db_worker`` on the test database: the worker of executor="tasks"."""
    argv = [sys.executable, "manage.py", "db_worker", "--interval", "0.1"]
    argv += ["--no-startup-delay", "--worker-id", name]
    worker = _spawn(env, f"db_worker-{name}.log", argv, env.env(modules, **overrides))
    time.sleep(1)  # it logs nothing when it is up; it polls the table from then on
    if worker.popen.poll() is not None:
        raise AssertionError(f"db_worker exited with {worker.popen.returncode}:\n{worker.log()}")
    return worker
