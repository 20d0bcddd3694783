"""This project's settings under the bench: the example project's, with the bench's jobs.

Everything else (database from DATABASE_URL with SQLite WAL / IMMEDIATE / busy
timeout, connection reuse with health checks, logging) is what a user of the
example project gets.
"""

import os

from settings import *  # noqa: F403

SCHEDULER = {"JOB_MODULES": ["bench.jobs_ours"]}

if os.environ.get("BENCH_QUERY_COUNT"):
    from bench import querycount

    querycount.install(os.environ["BENCH_QUERY_COUNT"])
