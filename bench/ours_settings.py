"""This project's settings under the bench: the example project's, with the bench's jobs.

Everything else (database from DATABASE_URL with SQLite WAL / IMMEDIATE / busy
timeout, connection reuse with health checks, logging) is what a user of the
example project gets.
"""

import os

# The example settings need a key with DEBUG off; the bench serves nothing over HTTP.
os.environ.setdefault("SECRET_KEY", "bench-only-" + "x" * 50)

from settings import *  # noqa: E402, F403

SCHEDULER = {"JOB_MODULES": ["bench.jobs_ours"]}
# The admin scenario talks plain HTTP to a local server, as the django-apscheduler
# project it is compared with does.
SECURE_SSL_REDIRECT = SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False

if os.environ.get("BENCH_QUERY_COUNT"):
    from bench import querycount

    querycount.install(os.environ["BENCH_QUERY_COUNT"])
