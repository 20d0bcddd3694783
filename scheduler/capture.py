"""Capture what a job prints and logs, per thread, while still showing it on the console."""

from __future__ import annotations

import io
import logging
import sys
import threading
from typing import Any, BinaryIO, TextIO

from scheduler.text import describe_exception, earlier_dropped, safe_str, storable

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
        """The last ``limit`` characters, as a database can store them (see ``text``)."""
        text = storable("".join(self._parts), sys.maxsize)
        dropped = self.dropped + max(0, len(text) - self.limit)
        text = text[-self.limit :] if len(text) > self.limit else text
        return f"{earlier_dropped(dropped)}{text}" if dropped else text


class _Tee(io.TextIOBase):
    """Stands in for sys.stdout/sys.stderr: copies the current thread's writes to its buffer.

    The console is a copy: a job must not fail because the console cannot take
    what it prints (a lone surrogate on a UTF-8 terminal, a closed pipe), since
    the run's output keeps it anyway.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._binary: _BinaryTee | None = None

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            # What the real stream says; the buffer must only ever hold text.
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        buffer = getattr(_local, "buffer", None)
        if buffer is None:
            return self._stream.write(text)
        buffer.write(text)
        try:
            self._stream.write(text)
        except UnicodeEncodeError:
            self._console(text.encode("utf-8", "backslashreplace").decode("utf-8"))
        except (OSError, ValueError):
            pass  # console closed or broken; the run's output has it
        return len(text)

    def _console(self, text: str) -> None:
        try:
            self._stream.write(text)
        except (OSError, ValueError, UnicodeError):
            pass

    @property
    def buffer(self) -> _BinaryTee:
        """``sys.stdout.buffer``: bytes written there are captured too."""
        if self._binary is None:
            self._binary = _BinaryTee(self._stream.buffer)
        return self._binary

    def flush(self) -> None:
        _flush(self._stream)

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")


class _BinaryTee(io.RawIOBase):
    """Stands in for ``sys.stdout.buffer``: bytes a job writes are kept as text.

    Decoded as UTF-8, with what is not UTF-8 kept as ``\\xff`` escapes.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, data: Any) -> int:
        data = bytes(data)  # bytes, bytearray, memoryview: what the real buffer takes
        buffer = getattr(_local, "buffer", None)
        if buffer is None:
            return self._stream.write(data)
        buffer.write(data.decode("utf-8", "backslashreplace"))
        try:
            self._stream.write(data)
        except (OSError, ValueError):
            pass
        return len(data)

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        _flush(self._stream)

    def fileno(self) -> int:
        return self._stream.fileno()


def _flush(stream: TextIO | BinaryIO) -> None:
    """Flush the console; inside a run, a console that is gone is not the job's failure."""
    try:
        stream.flush()
    except (OSError, ValueError):
        if getattr(_local, "buffer", None) is None:
            raise


# A Celery worker logs what its tasks print through this logger (worker_redirect_stdouts):
# the print itself is captured already, and would be twice.
_ECHOES = frozenset({"celery.redirected"})


def _is_ours(logger_name: str) -> bool:
    """The scheduler's own log lines are not part of a job's output, nor echoes of it."""
    root = logger_name.split(".", 1)[0]
    return root in ("apscheduler", "scheduler") or logger_name in _ECHOES


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        buffer = getattr(_local, "buffer", None)
        if buffer is None or _is_ours(record.name):
            return
        try:
            text = self.format(record)
        except Exception as exc:  # noqa: BLE001 - a bad message or argument must not fail the job
            text = (
                f"[a log record of {record.name} could not be formatted: "
                f"{describe_exception(exc)}; message {safe_str(record.msg)}]"
            )
        buffer.write(text + "\n")


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
