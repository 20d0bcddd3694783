"""Helpers of the harness: statistics, subprocesses and what /proc says about them."""

from __future__ import annotations

import atexit
import ctypes
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# Environment variables of the harness that must not leak into the systems under test.
# PYTHONDONTWRITEBYTECODE (set on the development machines): a deployment has its
# bytecode cached, and with it every start compiled the projects' modules again
# (about 70 ms of each start of this project).
_LEAKY = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "SCHEDULER_TEST_DIR", "PYTHONDONTWRITEBYTECODE")


class BenchError(RuntimeError):
    """A measurement that could not be taken; the message says why."""


# -- statistics ------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# -- time ------------------------------------------------------------------------


def sleep_until(wall_time: float) -> None:
    delay = wall_time - time.time()
    if delay > 0:
        time.sleep(delay)


# -- /proc -----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process, all its threads included."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM, the peak resident set size, in MiB."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def machine_cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0, 0.0
    values = [float(v) for v in first]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


# -- subprocesses ------------------------------------------------------------------

_children: set[Proc] = set()
_children_lock = threading.Lock()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGKILL when the harness dies, however it dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Proc:
    """A subprocess whose output lines are read as they come, with their arrival times."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        cwd: Path = ROOT,
    ) -> None:
        self.name = name
        self.log_path = log_path
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._log: IO[str] = open(log_path, "w", encoding="utf-8", errors="replace")
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        with _children_lock:
            _children.add(self)
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self) -> None:
        assert self.popen.stdout is not None
        try:
            for raw in self.popen.stdout:
                at = time.monotonic()
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self._log.write(line + "\n")
                with self._cond:
                    self.lines.append((at, line))
                    self._cond.notify_all()
        finally:
            self._log.close()
            with self._cond:
                self._cond.notify_all()

    def wait_line(self, text: str, timeout: float) -> float:
        """Seconds from the start of the process to the first line containing ``text``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for at, line in self.lines[seen:]:
                    if text in line:
                        return at - self.started
                seen = len(self.lines)
                if self.popen.poll() is not None and not self._reader.is_alive():
                    raise BenchError(
                        f"{self.name} exited with {self.popen.returncode} before printing "
                        f"{text!r}; last output:\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"{self.name} did not print {text!r} within {timeout:.0f} s; "
                        f"last output:\n{self.tail()}"
                    )
                self._cond.wait(min(left, 0.2))

    def output(self) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines)

    def tail(self, n: int = 15) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[-n:])

    def count(self, pattern: str) -> int:
        with self._cond:
            return sum(1 for _, line in self.lines if pattern in line)

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid)

    def peak_rss(self) -> float | None:
        return peak_rss_mb(self.pid)

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._finish()
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._finish()

    def children(self) -> list[int]:
        """Child processes, whichever of its threads started them."""
        pids: list[int] = []
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                pids += [int(pid) for pid in (task / "children").read_text().split()]
            except OSError:
                continue
        return sorted(set(pids))

    def _finish(self) -> None:
        self._reader.join(5)
        with _children_lock:
            _children.discard(self)


def kill_children() -> None:
    with _children_lock:
        children = list(_children)
    for child in children:
        child.kill()


atexit.register(kill_children)


def run_checked(
    argv: list[str], env: dict[str, str], timeout: float, what: str, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """Run a command to completion (killed after ``timeout``); fail with its output."""
    try:
        result = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{what}: timed out after {timeout:.0f} s") from exc
    if result.returncode != 0:
        raise BenchError(
            f"{what}: exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


RESULT_PREFIX = "BENCH_RESULT "


def run_probe(
    task: str, args: list[str], env: dict[str, str], timeout: float, log_path: Path
) -> dict[str, Any]:
    """Run ``python -m bench.probe TASK ...``; return the JSON it prints last."""
    import json

    result = run_checked([PYTHON, "-m", "bench.probe", task, *args], env, timeout, f"probe {task}")
    log_path.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise BenchError(f"probe {task} printed no result:\n{result.stdout[-2000:]}")


class Log:
    """Progress lines on stderr, with the elapsed time."""

    def __init__(self, quiet: bool = False) -> None:
        self.start = time.monotonic()
        self.quiet = quiet

    def __call__(self, text: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.start:7.1f}s] {text}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start
