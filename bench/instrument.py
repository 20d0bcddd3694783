"""Run a system's start-up under cProfile or tracemalloc, up to its ready line.

    python -m bench.instrument --cprofile OUT.pstats -- manage.py runapscheduler
    python -m bench.instrument --tracemalloc OUT.txt -- manage.py runapscheduler
    python -m bench.instrument --cprofile OUT.pstats -- -m bench.floor

Started by ``python -m bench.profile store --startup --tool cprofile|tracemalloc``
(py-spy needs no such help). The profile is written when the process prints its ready
line ("Active scheduler now" for this project), before the line itself goes out, so
that the harness stops the process only after it is written: this project leaves
through ``os._exit``, where ``python -m cProfile`` would write nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import linecache
import pstats
import runpy
import sys
import threading
import tracemalloc
from typing import Any

READY = ("Active scheduler now", "BENCH READY")


def _tracemalloc_report(path: str, top: int) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<unknown>")]
    )
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"traced now {current / 2**20:.1f} MiB, traced peak {peak / 2**20:.1f} MiB", ""]
    lines.append("By line (live at the ready line):")
    for stat in snapshot.statistics("lineno")[:top]:
        frame = stat.traceback[0]
        code = linecache.getline(frame.filename, frame.lineno).strip()
        lines.append(
            f"{stat.size / 2**20:8.2f} MiB {stat.count:9,d} blocks  "
            f"{frame.filename}:{frame.lineno}  {code}"
        )
    lines += ["", "By file:"]
    for stat in snapshot.statistics("filename")[:top]:
        frame = stat.traceback[0]
        lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:9,d} blocks  {frame.filename}")
    with open(path, "w") as out:
        out.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.instrument")
    tool = parser.add_mutually_exclusive_group(required=True)
    tool.add_argument("--cprofile", metavar="OUT")
    tool.add_argument("--tracemalloc", metavar="OUT")
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames per trace")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    profiler = cProfile.Profile() if args.cprofile else None
    # One profiler per thread (cProfile sees only the thread that enables it): this
    # project syncs its store in the leadership thread; merged when written.
    profilers = [profiler] if profiler is not None else []
    done = False

    def in_thread(frame: Any, event: str, arg: Any) -> None:
        thread_profiler = cProfile.Profile()
        profilers.append(thread_profiler)
        sys.setprofile(None)
        thread_profiler.enable()

    def at_ready() -> None:
        nonlocal done
        if done:
            return
        done = True
        if profiler is not None:
            threading.setprofile(None)
            stats = pstats.Stats(*profilers)
            stats.dump_stats(args.cprofile)
        else:
            _tracemalloc_report(args.tracemalloc, args.top)
            tracemalloc.stop()

    class Stdout:
        """sys.stdout that writes the profile before it passes the ready line on."""

        def __init__(self, stream: Any) -> None:
            self._stream = stream

        def write(self, text: str) -> int:
            if any(ready in text for ready in READY):
                at_ready()
            return self._stream.write(text)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._stream, name)

    sys.stdout = Stdout(sys.stdout)
    module = args.args[0] if args.script == "-m" else None
    sys.argv = [args.script, *args.args] if module is None else list(args.args)
    sys.path.insert(0, ".")
    if profiler is not None:
        threading.setprofile(in_thread)
        profiler.enable()
    else:
        tracemalloc.start(args.frames)
    if module is None:
        runpy.run_path(args.script, run_name="__main__")
    else:
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
