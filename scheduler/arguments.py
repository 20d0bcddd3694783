"""The arguments of a run scheduled from code: checked when it is scheduled, stored as
plain JSON in its row, and given to the job's function when it runs.

A run's arguments outlive the process that scheduled it and are read by another
(the active scheduler, or a worker), so only what JSON holds as it is goes in:
strings, numbers, booleans, None, lists and dicts with string keys. What a
database cannot store as it is (a NUL character, half of a surrogate pair, a
float that is not a number) and what would come back as something else (a
tuple comes back a list, a datetime as nothing at all) are refused at once, with
the path of the value at fault, so that the mistake surfaces in the code that
made it and not at 03:00 in a run that fails. The call is bound to the
function's signature at the same time: a missing or unknown argument is the
caller's error, not a failed run later.

Nothing here imports or evaluates what it reads: the stored arguments are plain
values handed to a function found by its job id in the code's registry.
"""

from __future__ import annotations

import datetime
import decimal
import inspect
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from django.db.models import Model

from scheduler.text import type_name

if TYPE_CHECKING:
    from scheduler.registry import JobSpec

# A run's arguments in its row: {"args": [...], "kwargs": {...}}, or {} for none.
Stored = dict[str, Any]

# Nesting deeper than this is refused (a JSON column holds it, but each level is a
# Python stack frame when it is checked and when it is read back).
MAX_DEPTH = 100


class ArgumentError(TypeError):
    """Arguments that a run scheduled from code cannot be given; the message names the
    job and the value at fault."""


def _problem(value: Any, path: str, depth: int) -> str | None:
    """Why ``value`` (at ``path``) cannot be stored as plain JSON and read back equal;
    None when it can."""
    if depth > MAX_DEPTH:
        return f"{path}: nested more than {MAX_DEPTH} levels deep"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return _text_problem(value, path)
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return f"{path}: {value!r} is not a number JSON can hold"
        return None
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _problem(item, f"{path}[{index}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (
                    f"{path}: a key of type {type_name(type(key))} is not a string "
                    "(JSON keys are strings)"
                )
            found = _text_problem(key, f"{path} key {key!r}") or _problem(
                item, f"{path}[{key!r}]", depth + 1
            )
            if found:
                return found
        return None
    return f"{path}: a {type_name(type(value))} is not plain JSON{_hint(value)}"


def _hint(value: Any) -> str:
    """How to pass ``value`` instead (by its type alone: a hostile value's attributes are
    never looked at)."""
    if isinstance(value, tuple):
        return " (pass a list: a tuple would come back as a list)"
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        return " (pass its isoformat() or a number of seconds, and convert it in the job)"
    if isinstance(value, decimal.Decimal):
        return " (pass str(value) and make a Decimal of it in the job)"
    if isinstance(value, (bytes, bytearray)):
        return " (pass text, e.g. base64)"
    if isinstance(value, (set, frozenset)):
        return " (pass a sorted list)"
    if isinstance(value, Model):
        return " (pass its primary key and fetch it in the job)"
    return ""


def _text_problem(text: str, path: str) -> str | None:
    if "\x00" in text:
        return f"{path}: the text holds a NUL character, which databases cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return f"{path}: the text holds half of a surrogate pair, which is not valid Unicode"
    return None


def check(spec: JobSpec, args: Any = (), kwargs: Any = None) -> Stored:
    """The stored form of a call of ``spec`` with ``args`` and ``kwargs``, checked: plain
    JSON, and accepted by the function's signature together with the job's declared
    ``args``/``kwargs`` (those given here win) and ``scheduled_at`` where it asks for
    it. Raises ArgumentError naming the job and what is wrong."""
    job = f"Job {spec.id!r}"
    if kwargs is None:
        kwargs = {}
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise ArgumentError(
            f"{job}: args must be a list of arguments, not a {type_name(type(args))}."
        )
    if not isinstance(kwargs, Mapping):
        raise ArgumentError(
            f"{job}: kwargs must be a dict of keyword arguments, not a {type_name(type(kwargs))}."
        )
    args, kwargs = list(args), dict(kwargs)
    problem = _problem(args, "args", 0) or _problem(kwargs, "kwargs", 0)
    if problem:
        raise ArgumentError(f"{job}: {problem}.")
    if "scheduled_at" in kwargs and spec.wants_scheduled_at:
        raise ArgumentError(
            f"{job}: scheduled_at is the scheduler's to give (the run's due time); "
            "pass the time under another name."
        )
    call_args, call_kwargs = merged(spec, args, kwargs)
    if spec.wants_scheduled_at:
        call_kwargs["scheduled_at"] = None
    try:
        inspect.signature(spec.func).bind(*call_args, **call_kwargs)
    except TypeError as exc:
        raise ArgumentError(f"{job} cannot be called with these arguments: {exc}.") from None
    stored: Stored = {}
    if args:
        stored["args"] = args
    if kwargs:
        stored["kwargs"] = kwargs
    return stored


def merged(
    spec: JobSpec, args: list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any]]:
    """The call's positional and keyword arguments: the job's declared ones, then a run's
    own (its positional ones after the declared; its keywords over the declared)."""
    return [*spec.args, *args], {**spec.kwargs, **kwargs}


def unpack(stored: Any) -> tuple[list[Any], dict[str, Any]]:
    """A row's stored arguments as (args, kwargs); anything else than the stored form
    (a row written by other means) gives none, never an error at run time here: the
    call then fails or not as the function decides."""
    if not isinstance(stored, dict):
        return [], {}
    args, kwargs = stored.get("args", []), stored.get("kwargs", {})
    return (list(args) if isinstance(args, list) else []), (
        dict(kwargs) if isinstance(kwargs, dict) else {}
    )


def describe(stored: Any) -> str:
    """The arguments as a call's text, for the admin and the logs: ``(1, user='ann')``."""
    args, kwargs = unpack(stored)
    parts = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"({', '.join(parts)})"
