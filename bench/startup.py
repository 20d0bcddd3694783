"""Scenario 3's start and restart, for one system, quickly: for working on start-up.

    python -m bench.startup --jobs 100000 --shape distinct --db sqlite --repeat 5
    python -m bench.startup --jobs 10000 --system floor

Each repeat: a fresh migrated database, a first start and a restart on it (as
``python -m bench --only store`` measures them, without the others systems or the
wake-up probe unless ``--wakeup``); then the median of each figure. Figures of
record come from ``python -m bench``; this is for comparing a change back to back.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import systems
from bench.common import Log, median, run_probe
from bench.databases import PostgresBackend, SQLiteBackend
from bench.scenarios import Context
from bench.scenarios.store import _start

KEYS = ("first_s", "first_up_s", "restart_s", "restart_up_s", "first_cpu_s", "rss_mb")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup")
    parser.add_argument("--system", choices=systems.SYSTEMS, default="ours")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--shape", choices=["few", "distinct"], default="few")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--wakeup", action="store_true", help="and the wake-up probe")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args(argv)
    log = Log()
    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    backend = None
    samples: dict[str, list[float | None]] = {key: [] for key in (*KEYS, "wakeup_ms")}
    try:
        if args.system != "floor":
            backend = (SQLiteBackend if args.db == "sqlite" else PostgresBackend)(workdir, log)
        ns = argparse.Namespace(store_timeout=args.timeout)
        ctx = Context(args=ns, backends={}, workdir=workdir, log=log)
        ctx.store_hour0 = (time.gmtime().tm_hour + 2) % 24
        env = {
            "BENCH_SCENARIO": "store",
            "BENCH_JOBS": args.jobs,
            "BENCH_HOUR0": ctx.store_hour0,
            "BENCH_SHAPE": args.shape,
        }
        for repeat in range(args.repeat):
            database = backend.fresh(args.system, "startup") if backend else None
            try:
                first = _start(ctx, args.system, database, env)
                second = _start(ctx, args.system, database, env)
                row = {
                    "first_s": first["ready_s"],
                    "first_up_s": first["up_s"],
                    "restart_s": second["ready_s"],
                    "restart_up_s": second["up_s"],
                    "first_cpu_s": first["cpu_s"],
                    "rss_mb": max(first["rss_mb"] or 0, second["rss_mb"] or 0) or None,
                }
                if args.wakeup:
                    probe = run_probe(
                        "wakeup",
                        ["--system", args.system],
                        systems.env_for(args.system, database, **env),
                        300,
                        workdir / f"wakeup-{repeat}.log",
                    )
                    row["wakeup_ms"] = probe["wakeup_ms"]
            finally:
                if backend is not None and database is not None:
                    backend.drop(database)
            for key, value in row.items():
                samples[key].append(value)
            print(
                f"repeat {repeat + 1}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if v is not None),
                flush=True,
            )
        print(
            f"median of {args.repeat}, {args.system} on {args.db}, {args.jobs} jobs, "
            f"{args.shape}: "
            + ", ".join(f"{k} {median(v):.2f}" for k, v in samples.items() if median(v) is not None)
        )
    finally:
        if backend is not None:
            backend.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
