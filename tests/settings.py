"""Settings for the test suite: the example project's, on a real SQLite file."""

import os
import tempfile

# The example settings refuse to start without a key when DEBUG is off, as the
# tests run. setdefault: a key set by the caller wins. Subprocesses inherit it.
os.environ.setdefault("SECRET_KEY", "tests-only-" + "x" * 50)

from settings import *  # noqa: E402, F403

# The test client and the test servers speak plain HTTP.
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = False
SECURE_HSTS_SECONDS = 0

_TMP = os.environ.get("SCHEDULER_TEST_DIR") or tempfile.mkdtemp(prefix="scheduler-tests-")

if "DATABASE_URL" not in os.environ:
    DATABASES["default"]["NAME"] = os.path.join(_TMP, "db.sqlite3")  # noqa: F405
    # A file, not Django's in-memory default: WAL, locking and several
    # connections behave as they do in production.
    DATABASES["default"]["TEST"] = {"NAME": os.path.join(_TMP, "test.sqlite3")}  # noqa: F405

SCHEDULER = {"JOB_MODULES": ["tests.jobs"], "POLL_INTERVAL": 0.2}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
