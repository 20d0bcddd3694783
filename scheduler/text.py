"""Text a job produced, made fit for a database column.

A job's output, its exception message and its traceback can hold anything
Python strings hold; databases cannot store all of it, and one value they
refuse must not cost a run its result:

* lone surrogates (``os.fsdecode`` of a file name that is not UTF-8 gives
  ``"\\udcff"``) cannot be encoded as UTF-8, so neither SQLite's driver nor
  psycopg can send them: they are written as their escape, ``\\udcff``;
* PostgreSQL refuses NUL characters in text: they are written as ``\\x00``
  (on every database, so that a run reads the same wherever it is stored);
* huge values are capped at ``limit`` characters, keeping the end (output,
  tracebacks: the last lines say what happened) or the start (a message).
"""

from __future__ import annotations

from typing import Literal


def storable(text: object, limit: int, keep: Literal["head", "tail"] = "tail") -> str:
    """``text`` as a database can hold it, at most about ``limit`` characters."""
    if not isinstance(text, str):
        text = safe_str(text)
    elif type(text) is not str:
        text = str.__str__(text)  # a str subclass may carry a __str__ of its own
    if not text.isascii():
        # Lone surrogates cannot be encoded; escape them (and only them).
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return cap(text, limit, keep)


def cap(text: str, limit: int, keep: Literal["head", "tail"] = "tail") -> str:
    """At most ``limit`` characters of ``text`` with a note of how many were left out."""
    if len(text) <= limit:
        return text
    dropped = len(text) - limit
    if keep == "tail":
        return f"{earlier_dropped(dropped)}{text[-limit:]}"
    return f"{text[:limit]}\n[… {dropped} more characters not kept …]"


def earlier_dropped(count: int) -> str:
    """The line that stands for ``count`` characters left out before the kept tail."""
    return f"[… {count} earlier characters not kept …]\n"


def safe_str(value: object) -> str:
    """``str(value)``, or the best description available when that raises."""
    try:
        text = str(value)
        if isinstance(text, str):
            return text
    except Exception:  # noqa: BLE001 - any __str__ may raise anything; we describe it instead
        pass
    try:
        return repr(value)
    except Exception:  # noqa: BLE001
        return f"<{type_name(type(value))} object: str() and repr() raised>"


def type_name(cls: type) -> str:
    """``module.QualName``, without ``builtins.``; never raises."""
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", None) or "?"
    if not isinstance(module, str) or module == "builtins":
        return str(name)
    return f"{module}.{name}"


def describe_exception(exc: BaseException) -> str:
    """``ValueError: bad value``; with a message that cannot be turned into text, says so."""
    name = type_name(type(exc))
    try:
        message = str(exc)
    except Exception as error:  # noqa: BLE001 - the job's exception decides what str() raises
        return f"{name}: <str() of the exception raised {type_name(type(error))}>"
    if not isinstance(message, str):
        return f"{name}: <str() of the exception did not return text>"
    return f"{name}: {message}" if message else name
