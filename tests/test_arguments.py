"""scheduler/arguments.py: what a run scheduled from code may be given, refused at once
with the value at fault named, and what reaches the function."""

from __future__ import annotations

import decimal
import importlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from scheduler import arguments
from scheduler.arguments import ArgumentError
from scheduler.body import make_call
from scheduler.registry import JobSpec, registry


@pytest.fixture
def specs() -> dict[str, JobSpec]:
    from tests.proc import oneoff

    if "oneoff.remind" not in registry:
        importlib.reload(oneoff)
    return {key: registry[key] for key in ("oneoff.remind", "oneoff.count", "oneoff.report")}


def test_plain_json_is_stored_as_given(specs: dict[str, JobSpec]) -> None:
    stored = arguments.check(specs["oneoff.remind"], [7], {"note": "ünïcode ✓ 🎉"})
    assert stored == {"args": [7], "kwargs": {"note": "ünïcode ✓ 🎉"}}
    assert arguments.check(specs["oneoff.report"]) == {}
    nested = {"customer": {"ids": [1, 2.5, None, True], "name": {"first": "a"}}}
    assert arguments.check(specs["oneoff.report"], kwargs=nested) == {"kwargs": nested}
    # A tuple at the top is the usual way to write positional arguments.
    assert arguments.check(specs["oneoff.remind"], (7, "x")) == {"args": [7, "x"]}


class Hostile:
    def __repr__(self) -> str:
        raise RuntimeError("repr refuses")

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name}")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"note": "a\x00b"}, "kwargs['note']: the text holds a NUL character"),
        ({"note": "half \ud800"}, "kwargs['note']: the text holds half of a surrogate pair"),
        ({"note": float("nan")}, "kwargs['note']: nan is not a number JSON can hold"),
        ({"note": float("inf")}, "kwargs['note']: inf is not a number JSON can hold"),
        ({"note": (1, 2)}, "kwargs['note']: a tuple is not plain JSON (pass a list"),
        ({"note": datetime.now(UTC)}, "a datetime.datetime is not plain JSON (pass its isoformat"),
        ({"note": timedelta(1)}, "a datetime.timedelta is not plain JSON"),
        ({"note": decimal.Decimal("1.5")}, "a decimal.Decimal is not plain JSON (pass str(value)"),
        ({"note": b"raw"}, "a bytes is not plain JSON (pass text"),
        ({"note": {1, 2}}, "a set is not plain JSON (pass a sorted list)"),
        ({"note": Hostile()}, "kwargs['note']: a tests.test_arguments.Hostile is not plain JSON."),
        (
            {"note": {"x": [{"y\x00": 1}]}},
            "kwargs['note']['x'][0] key 'y\\x00': the text holds a NUL",
        ),
        ({"note": {1: "a"}}, "kwargs['note']: a key of type int is not a string"),
        ({"note": {Hostile(): "a"}}, "a key of type tests.test_arguments.Hostile is not a string"),
    ],
)
def test_what_a_database_cannot_store_or_json_cannot_give_back_is_refused(
    specs: dict[str, JobSpec], kwargs: dict[str, Any], words: str
) -> None:
    with pytest.raises(ArgumentError) as caught:
        arguments.check(specs["oneoff.remind"], [1], kwargs)
    assert str(caught.value).startswith("Job 'oneoff.remind': ")
    assert words in str(caught.value)


def test_nesting_beyond_the_limit_is_refused(specs: dict[str, JobSpec]) -> None:
    deep: list[Any] = []
    for _ in range(arguments.MAX_DEPTH + 5):
        deep = [deep]
    with pytest.raises(ArgumentError, match="nested more than 100 levels deep"):
        arguments.check(specs["oneoff.remind"], [1], {"note": deep})


def test_a_self_containing_value_is_refused_not_a_recursion_error(
    specs: dict[str, JobSpec],
) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ArgumentError, match="nested more than"):
        arguments.check(specs["oneoff.remind"], [1], {"note": loop})


@pytest.mark.parametrize(
    ("args", "kwargs", "words"),
    [
        ([], {}, "missing a required argument: 'user_id'"),
        ([1], {"colour": "red"}, "got an unexpected keyword argument 'colour'"),
        ([1, "a", "b"], {}, "too many positional arguments"),
        ("abc", {}, "args must be a list of arguments, not a str"),
        ([1], [("note", "x")], "kwargs must be a dict of keyword arguments, not a list"),
        ([1], {"scheduled_at": "2026-01-01"}, "scheduled_at is the scheduler's to give"),
    ],
)
def test_a_call_the_function_would_refuse_is_refused_now(
    specs: dict[str, JobSpec], args: Any, kwargs: Any, words: str
) -> None:
    with pytest.raises(ArgumentError) as caught:
        arguments.check(specs["oneoff.remind"], args, kwargs)
    assert words in str(caught.value)


def test_the_run_gets_its_arguments_after_the_declared_ones_and_its_due_time(
    specs: dict[str, JobSpec], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    marks = tmp_path / "marks"
    monkeypatch.setenv("PROC_MARKS", str(marks))
    due = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)
    stored = arguments.check(specs["oneoff.remind"], [42], {"note": "hi"})
    make_call(specs["oneoff.remind"], None, due, stored)()
    make_call(specs["oneoff.report"], None, due, {"kwargs": {"customer": "acme"}})()
    make_call(specs["oneoff.report"], None, due, {})()
    assert marks.read_text().splitlines() == [
        f"start oneoff.remind 42:hi {due.isoformat()}",
        f"start oneoff.report acme {due.isoformat()}",
        f"start oneoff.report everyone {due.isoformat()}",
    ]


def test_stored_arguments_in_another_shape_give_none_and_describe_never_raises() -> None:
    assert arguments.unpack(None) == ([], {})
    assert arguments.unpack({"args": "x", "kwargs": [1]}) == ([], {})
    assert arguments.unpack({"args": [1], "kwargs": {"a": 2}}) == ([1], {"a": 2})
    assert arguments.describe({"args": [1, "x"], "kwargs": {"a": None}}) == "(1, 'x', a=None)"
    assert arguments.describe("junk") == "()"
