"""scheduler/text.py: what a job produced, made fit for a database column, and exceptions named.

The end-to-end path (awkward text from real jobs stored on SQLite and PostgreSQL) is in
test_robustness.py; here, the exact text that is stored.
"""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.text import describe_exception, safe_str, storable


class StrRaises:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        return "<StrRaises>"


class BothRaise:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class StrNotText:
    def __str__(self) -> Any:
        return 42  # str() raises TypeError

    def __repr__(self) -> str:
        return "<StrNotText>"


class OwnStr(str):
    """A str subclass with a __str__ of its own: its text is what is stored."""

    def __str__(self) -> str:
        raise RuntimeError("no str")


class JobError(Exception):
    class Inner(Exception):
        pass


class MessageRaises(Exception):
    def __str__(self) -> str:
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")


# -- storable -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("plain", "plain"),
        ("héllo 世界 🎉", "héllo 世界 🎉"),
        # os.fsdecode of a file name that is not UTF-8: the escape, and only that.
        ("report-\udcff.csv é", "report-\\udcff.csv é"),
        ("\ud83c\udf89", "\\ud83c\\udf89"),  # a pair of lone surrogates stays two escapes
        ("a\x00b\x00", "a\\x00b\\x00"),
        ("\udcff\x00", "\\udcff\\x00"),
        (b"\xff\x00raw", "b'\\xff\\x00raw'"),
        (None, "None"),
        (42, "42"),
        (StrRaises(), "<StrRaises>"),
        (StrNotText(), "<StrNotText>"),
        (BothRaise(), "<tests.test_text.BothRaise object: str() and repr() raised>"),
        (OwnStr("its text"), "its text"),
    ],
    ids=[
        "ascii",
        "unicode",
        "lone-surrogate",
        "surrogate-pair",
        "NUL",
        "both",
        "bytes",
        "None",
        "int",
        "str-raises",
        "str-not-text",
        "str-and-repr-raise",
        "str-subclass",
    ],
)
def test_storable_text_is_the_text_escaped_where_a_database_cannot_hold_it(
    value: object, stored: str
) -> None:
    text = storable(value, 1000)
    assert text == stored
    assert type(text) is str
    text.encode("utf-8")  # what the drivers send: never raises


def test_storable_text_keeps_the_tail_of_output_and_the_head_of_a_message() -> None:
    output = "".join(f"line {i}\n" for i in range(100))  # 790 characters
    assert storable(output, 16) == "[… 774 earlier characters not kept …]\nline 98\nline 99\n"
    message = "the first words say what went wrong" + "." * 100
    assert storable(message, 14, "head") == "the first word\n[… 121 more characters not kept …]"
    # Up to the limit, whole.
    assert storable("x" * 14, 14) == storable("x" * 14, 14, "head") == "x" * 14


def test_storable_text_is_capped_after_escaping() -> None:
    """The escapes count: what is kept is at most ``limit`` characters besides the note."""
    assert storable("\x00" * 10, 8) == "[… 32 earlier characters not kept …]\n\\x00\\x00"
    assert storable("\udcff" * 3, 6, "head") == "\\udcff\n[… 12 more characters not kept …]"


# -- describe_exception and safe_str --------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (ValueError("bad value"), "ValueError: bad value"),
        (ValueError(), "ValueError"),
        (KeyError("k"), "KeyError: 'k'"),
        (JobError("failed"), "tests.test_text.JobError: failed"),
        (JobError.Inner("failed"), "tests.test_text.JobError.Inner: failed"),
        (
            type("Odd", (Exception,), {"__module__": None})("made at run time"),
            "Odd: made at run time",
        ),
        (
            MessageRaises(),
            "tests.test_text.MessageRaises: <str() of the exception raised UnicodeDecodeError>",
        ),
        (RuntimeError("\udcff\x00"), "RuntimeError: \udcff\x00"),  # escaped when stored
    ],
    ids=["builtin", "no-message", "KeyError", "custom", "nested", "no-module", "str-raises", "raw"],
)
def test_an_exception_is_named_with_its_message(exc: BaseException, text: str) -> None:
    assert describe_exception(exc) == text


def test_safe_str_describes_what_cannot_be_turned_into_text() -> None:
    assert safe_str("text") == "text"
    assert safe_str(StrRaises()) == "<StrRaises>"
    assert safe_str(BothRaise()) == "<tests.test_text.BothRaise object: str() and repr() raised>"
