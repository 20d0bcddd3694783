"""Profile a system under a bench workload with py-spy (``pip install py-spy``).

    python -m bench.profile load --system ours --db sqlite --seconds 15
    python -m bench.profile accuracy --system ours --db postgres
    python -m bench.profile store --startup --db postgres     # start-up, 10,000 jobs
    python -m bench.profile store --startup --restart          # the restart after it
    python -m bench.profile store --startup --tool cprofile --jobs 100000 --shape distinct
    python -m bench.profile store --startup --tool tracemalloc --jobs 100000

Without py-spy, ``--tool cprofile`` (deterministic: every call counted, and slowed)
or ``--tool tracemalloc`` (the memory alive at the ready line, by line of code) profile
the start-up (``--startup``) through bench/instrument.py; the pstats file or the
report is kept in ``--out``.

Starts the system as the bench does (fresh migrated database, same jobs),
waits for its ready line and a warm-up, samples it with ``py-spy record`` for
``--seconds``, and prints the functions with the most samples, inclusive and
self; the raw collapsed stacks and a speedscope file are kept in ``--out``
(default bench/results/profile-<scenario>-<system>-<db>.*) for a flame graph.
With ``--startup``, the process is started under py-spy instead, every sample
counted (idle ones too: start-up time is wall time, waits on the database
included), until the ready line; ``--restart`` starts it once first, unprofiled,
and profiles the second start on the same database.

Otherwise only samples py-spy judges active are counted; its idle detection misses some
waits (``time.sleep``, ``queue.get`` show up), so ``--gil`` (only the thread
holding the GIL) is the better view of where Python spends CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench import systems
from bench.common import ROOT, Log, Proc, sleep_until
from bench.databases import PostgresBackend, SQLiteBackend

JOBS = {"accuracy": 20, "load": 200, "store": 10_000}


def summarize(raw: Path, top: int, focus: str | None = None) -> str:
    inclusive: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        if focus:
            hits = [i for i, frame in enumerate(frames) if focus in frame]
            if not hits:
                continue
            frames = frames[hits[0] :]
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        self_time[frames[-1]] += n
    if not total:
        return "no samples"

    def rows(counter: Counter[str]) -> str:
        return "\n".join(
            f"{100 * n / total:6.1f}%  {frame}" for frame, n in counter.most_common(top)
        )

    return (
        f"{total} active samples\n\nInclusive (the function and what it calls):\n"
        f"{rows(inclusive)}\n\nSelf:\n{rows(self_time)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("scenario", choices=sorted(JOBS))
    parser.add_argument("--system", choices=systems.SYSTEMS, default="ours")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=250, help="samples per second")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL: Python CPU, without time spent in C "
        "with the GIL released (SQLite's own work, socket I/O)",
    )
    parser.add_argument(
        "--focus",
        metavar="TEXT",
        help="count only stacks through a frame containing TEXT (e.g. Service.elected), "
        "from that frame down",
    )
    parser.add_argument("--startup", action="store_true", help="profile the start-up")
    parser.add_argument("--restart", action="store_true", help="with --startup: the restart")
    parser.add_argument(
        "--shape", choices=["few", "distinct"], default="few", help="store: schedules"
    )
    parser.add_argument(
        "--tool",
        choices=["py-spy", "cprofile", "tracemalloc"],
        default="py-spy",
        help="with --startup: cProfile or tracemalloc in the process instead of py-spy",
    )
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if args.tool != "py-spy" and not args.startup:
        parser.error("--tool cprofile/tracemalloc profile the start-up: add --startup")
    if args.tool == "py-spy" and not Path(py_spy).exists():
        print("py-spy not found: pip install -r requirements-bench.txt", file=sys.stderr)
        return 2
    name = f"profile-{args.scenario}-{args.system}-{args.db}{'-gil' if args.gil else ''}"
    if args.scenario == "store":
        name += f"-{args.jobs or JOBS['store']}-{args.shape}"
    out = args.out or ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Log()
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    backend = None
    proc = None
    try:
        database = None
        if args.system != "floor":
            backend = (SQLiteBackend if args.db == "sqlite" else PostgresBackend)(workdir, log)
            database = backend.fresh(args.system, "profile")
        jobs = args.jobs or JOBS[args.scenario]
        hour0 = (time.gmtime().tm_hour + 2) % 24
        env = dict(
            BENCH_SCENARIO=args.scenario,
            BENCH_JOBS=jobs,
            BENCH_HOUR0=hour0,
            BENCH_OBS=workdir / "obs",
            BENCH_SHAPE=args.shape,
        )
        if args.startup:
            return _startup(args, py_spy, out, database, workdir, env)
        proc = systems.start(args.system, database, workdir / "system.log", **env)
        proc.wait_line(systems.READY[args.system], 600)
        sleep_until(math.ceil(time.time()) + 2)
        log(f"sampling pid {proc.pid} for {args.seconds} s")
        cpu0 = proc.cpu()
        raw = out.with_suffix(".txt")
        command = [py_spy, "record", "-p", str(proc.pid), "-d", str(args.seconds),
                   "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--nonblocking"]  # fmt: skip
        if args.gil:
            command.append("--gil")
        subprocess.run(command, check=True, capture_output=True, timeout=args.seconds + 60)
        cpu1 = proc.cpu()
        print(
            f"{args.system} on {args.db}, {args.scenario} with {jobs} jobs: "
            f"{(cpu1 or 0) - (cpu0 or 0):.2f} CPU s in {args.seconds} s\n"
        )
        print(summarize(raw, args.top, args.focus))
        print(f"\ncollapsed stacks: {raw}")
    finally:
        if proc is not None:
            proc.stop()
        if backend is not None:
            backend.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _startup(args, py_spy: str, out: Path, database, workdir: Path, env: dict) -> int:
    if args.restart:
        first = systems.start(args.system, database, workdir / "first.log", **env)
        first.wait_line(systems.READY[args.system], 600)
        first.stop()
    if args.tool != "py-spy":
        return _instrumented(args, out, database, workdir, env)
    raw = out.with_name(out.name + ("-restart" if args.restart else "-startup")).with_suffix(".txt")
    argv = [py_spy, "record", "--idle", "-r", str(args.rate), "-f", "raw", "-o", str(raw), "--",
            *systems.ARGV[args.system]]  # fmt: skip
    proc = Proc("py-spy", argv, systems.env_for(args.system, database, **env), workdir / "s.log")
    # py-spy's child does not die with us (no parent-death signal): remember it to end it.
    profiled: list[int] = []
    try:
        ready = proc.wait_line(systems.READY[args.system], 600)
        profiled = proc.children()
        # Stop the profiled process; py-spy then writes the profile and exits.
        for pid in profiled:
            os.kill(pid, signal.SIGTERM)
        proc.popen.wait(60)
    finally:
        profiled += [pid for pid in proc.children() if pid not in profiled]
        for pid in profiled:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.stop(timeout=10)
    print(f"{args.system} on {args.db}: ready {ready:.2f} s after exec (slower under py-spy)\n")
    print(summarize(raw, args.top, args.focus))
    print(f"\ncollapsed stacks: {raw}")
    return 0


def _instrumented(args, out: Path, database, workdir: Path, env: dict) -> int:
    """The start-up under cProfile or tracemalloc (bench/instrument.py), to the ready line."""
    import pstats

    suffix = ".pstats" if args.tool == "cprofile" else ".txt"
    path = out.with_name(
        f"{out.name}-{'restart' if args.restart else 'startup'}-{args.tool}"
    ).with_suffix(suffix)
    python, *command = systems.ARGV[args.system]
    argv = [python, "-m", "bench.instrument", f"--{args.tool}", str(path), "--", *command]
    proc = Proc(args.tool, argv, systems.env_for(args.system, database, **env), workdir / "i.log")
    try:
        ready = proc.wait_line(systems.READY[args.system], 1200)
    finally:
        proc.stop(timeout=10)
    print(
        f"{args.system} on {args.db}: ready {ready:.2f} s after exec (slower under {args.tool})\n"
    )
    if args.tool == "cprofile":
        for key in ("cumulative", "tottime"):
            pstats.Stats(str(path)).sort_stats(key).print_stats(args.top)
    else:
        print(path.read_text())
    print(f"\n{args.tool} output: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
