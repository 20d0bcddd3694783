"""Capture what a job prints and logs, per thread, while still showing it on the console."""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import TextIO

_local = threading.local()
_install_lock = threading.Lock()


class Buffer:
    """Keeps the last ``limit`` characters written, so a chatty job cannot exhaust memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[str] = []
        self._size = 0
        self.dropped = 0

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)
        if self._size > 2 * self.limit:
            self._trim()

    def _trim(self) -> None:
        text = "".join(self._parts)
        excess = max(0, len(text) - self.limit)
        self.dropped += excess
        text = text[excess:]
        self._parts, self._size = [text], len(text)

    def getvalue(self) -> str:
        self._trim()
        text = self._parts[0] if self._parts else ""
        if self.dropped:
            return f"[… {self.dropped} earlier characters not kept …]\n{text}"
        return text


class _Tee(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: copies the current thread's writes to its buffer."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        buffer = getattr(_local, "buffer", None)
        if buffer is not None:
            buffer.write(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")


def _is_ours(logger_name: str) -> bool:
    """The scheduler's own log lines are not part of a job's output."""
    root = logger_name.split(".", 1)[0]
    return root in ("apscheduler", "scheduler")


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        buffer = getattr(_local, "buffer", None)
        if buffer is not None and not _is_ours(record.name):
            buffer.write(self.format(record) + "\n")


_handler = _Handler()
_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))


def _installed() -> bool:
    return (
        isinstance(sys.stdout, _Tee)
        and isinstance(sys.stderr, _Tee)
        and _handler in logging.getLogger().handlers
    )


def install() -> None:
    """Route stdout, stderr and logging through the per-thread capture (idempotent)."""
    if _installed():  # every run checks: no lock on that path
        return
    with _install_lock:
        if not isinstance(sys.stdout, _Tee):
            sys.stdout = _Tee(sys.stdout)
        if not isinstance(sys.stderr, _Tee):
            sys.stderr = _Tee(sys.stderr)
        root = logging.getLogger()
        if _handler not in root.handlers:
            root.addHandler(_handler)


class capture:  # noqa: N801 - used as a function: ``with capture(limit) as output``
    """Capture the current thread's output into a ``Buffer`` of ``limit`` characters."""

    __slots__ = ("buffer", "previous")

    def __init__(self, limit: int) -> None:
        self.buffer = Buffer(limit)
        self.previous: Buffer | None = None

    def __enter__(self) -> Buffer:
        install()
        self.previous = getattr(_local, "buffer", None)
        _local.buffer = self.buffer
        return self.buffer

    def __exit__(self, *exc_info: object) -> None:
        _local.buffer = self.previous
