"""The scenarios, and what they share: parameters, repeated samples, medians and ratios."""

from __future__ import annotations

import argparse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Log, median, ratio
from bench.databases import Backend


@dataclass
class Metric:
    key: str
    label: str
    unit: str = ""
    digits: int = 1
    systems: tuple[str, ...] = ("floor", "dja", "ours")


@dataclass
class Ratio:
    """Metric of system ``a`` divided by that of ``b``, per repeat; then the median."""

    key: str
    a: str
    b: str

    @property
    def name(self) -> str:
        return f"{self.key}:{self.a}/{self.b}"


@dataclass
class Target:
    """A goal for this project's figure: ``value op limit``.

    ``key`` names a metric of ``system`` (or, with ``ratio``, a comparison);
    ``limit_key`` compares with another metric of the same system instead of a constant
    (of ``limit_system`` if set, plus ``limit``); ``scenario`` reads the value from
    another scenario's results; ``compare`` is the other system judged by the same
    yardstick, for comparison.
    """

    label: str
    key: str
    op: str
    limit: float | None = None
    limit_key: str | None = None
    unit: str = ""
    ratio: bool = False
    scenario: str | None = None
    system: str = "ours"
    limit_system: str | None = None
    compare: str = "dja"
    goal: str | None = None  # the goal in words, instead of the one made from the fields

    @property
    def text(self) -> str:
        sign = {"<=": "≤", ">=": "≥", "==": "="}[self.op]
        if self.goal:
            return f"{sign} {self.goal}"
        if self.limit_key:
            return f"{sign} {self.limit_key.replace('_', ' ')}"
        limit = f"{self.limit:g}"
        return f"{sign} {limit}{' ' + self.unit if self.unit else ''}"


@dataclass
class Context:
    args: argparse.Namespace
    backends: dict[str, Backend]
    workdir: Path
    log: Log
    store_hour0: int = 0
    counter: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def tag(self, *parts: str) -> str:
        base = "-".join(parts)
        self.counter[base] += 1
        return f"{base}-{self.counter[base]}"


class Collector:
    """Samples per database and system, one per repeat; medians and per-repeat ratios."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, dict[str, list[Any]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list))
        )
        self.ratio_samples: dict[str, dict[str, list[float | None]]] = defaultdict(
            lambda: defaultdict(list)
        )
        self.extra: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)

    def add(self, db: str, system: str, metrics: dict[str, Any]) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) or value is None:
                self.samples[db][system][key].append(value)
            else:
                self.extra[db].setdefault(system, {})[key] = value

    def add_ratios(self, db: str, ratios: list[Ratio], by_system: dict[str, dict]) -> None:
        for r in ratios:
            a = by_system.get(r.a, {}).get(r.key)
            b = by_system.get(r.b, {}).get(r.key)
            self.ratio_samples[db][r.name].append(ratio(a, b))

    def summary(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        for db, systems in self.samples.items():
            results[db] = {}
            for system, metrics in systems.items():
                results[db][system] = {
                    "median": {k: median(v) for k, v in metrics.items()},
                    "samples": {k: list(v) for k, v in metrics.items()},
                    **({"details": self.extra[db][system]} if system in self.extra[db] else {}),
                }
        ratios = {
            db: {name: median(values) for name, values in by_name.items()}
            for db, by_name in self.ratio_samples.items()
        }
        return {"results": results, "ratios": ratios}


def db_kinds(ctx: Context) -> list[str]:
    return list(ctx.backends)
