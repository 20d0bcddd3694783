"""The example project: its settings refuse unsafe starts, and the demo keeps to its own database.

Everything runs as the user runs it: ``manage.py`` and ``scripts/demo.sh`` as
subprocesses, with the environment a developer's shell might hold.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.proc.harness import ROOT, wait_for
from tests.proc.pg import free_port, postgres_server
from tests.proc.workers import NOT_FOUND as REDIS_NOT_FOUND

# Variables of this process (or of a developer's shell) that would change what is tested.
_CLEARED = (
    "DJANGO_SETTINGS_MODULE",
    "DATABASE_URL",
    "SCHEDULER_TEST_DIR",
    "SECRET_KEY",
    "DEBUG",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "SECURE_PROXY_SSL_HEADER",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "CELERY_BROKER_URL",
)
SECRET_KEY_LINE = (
    "django.core.exceptions.ImproperlyConfigured: SECRET_KEY is not set: set the SECRET_KEY "
    "environment variable to a long random string "
    "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
    "or DEBUG=1 for local development."
)


def clean_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(DJANGO_SETTINGS_MODULE="settings", DATABASE_URL=f"sqlite:///{tmp_path / 'x.db'}")
    env.update(values)
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def settings_of(env: dict[str, str], *names: str) -> dict:
    """The example project's settings as a process started with ``env`` sees them."""
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        f"print(json.dumps({{n: getattr(settings, n) for n in {list(names)!r}}}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# Settings --------------------------------------------------------------------------


def test_check_deploy_passes_with_debug_off_and_a_secret_key(tmp_path):
    env = clean_env(tmp_path, SECRET_KEY=secrets.token_urlsafe(60))

    result = manage(env, "check", "--deploy")

    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    # security.W021 (HSTS preload off) stays on purpose: preloading is the site owner's
    # decision, months to undo (see settings/__init__.py). Nothing else is reported.
    assert re.findall(r"\((\w+\.\w+)\)", output) == ["security.W021"], output


def test_check_deploy_reports_the_development_key(tmp_path):
    result = manage(clean_env(tmp_path, DEBUG="1"), "check", "--deploy")

    assert "security.W009" in result.stderr  # the fallback key is called insecure
    assert "security.W018" in result.stderr  # DEBUG on


@pytest.mark.parametrize("key", [None, ""])
def test_settings_refuse_to_start_without_a_secret_key(tmp_path, key):
    env = clean_env(tmp_path)
    if key is not None:
        env["SECRET_KEY"] = key

    result = manage(env, "check")

    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == SECRET_KEY_LINE


def test_debug_runs_without_a_secret_key_over_plain_http(tmp_path):
    env = clean_env(tmp_path, DEBUG="1")

    assert manage(env, "check").returncode == 0
    assert settings_of(
        env,
        "SECURE_SSL_REDIRECT",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
    ) == {
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": False,
        "CSRF_COOKIE_SECURE": False,
        "SECURE_HSTS_SECONDS": 0,
    }


def test_https_settings_are_on_by_default_and_each_can_be_set_for_a_proxy(tmp_path):
    names = (
        "SECURE_SSL_REDIRECT",
        "SESSION_COOKIE_SECURE",
        "CSRF_COOKIE_SECURE",
        "SECURE_HSTS_SECONDS",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS",
        "SECURE_HSTS_PRELOAD",
        "SECURE_PROXY_SSL_HEADER",
        "CSRF_TRUSTED_ORIGINS",
    )
    production = clean_env(tmp_path, SECRET_KEY=secrets.token_urlsafe(60))
    assert settings_of(production, *names) == {
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": False,
        "SECURE_PROXY_SSL_HEADER": None,
        "CSRF_TRUSTED_ORIGINS": [],
    }

    behind_proxy = {
        **production,
        "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO",
        "SECURE_SSL_REDIRECT": "0",
        "SECURE_HSTS_SECONDS": "3600",
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": "false",
        "SECURE_HSTS_PRELOAD": "yes",
        "CSRF_TRUSTED_ORIGINS": "https://admin.example.com, https://ops.example.com",
    }
    assert settings_of(behind_proxy, *names) == {
        "SECURE_SSL_REDIRECT": False,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 3600,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": False,
        "SECURE_HSTS_PRELOAD": True,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],
        "CSRF_TRUSTED_ORIGINS": ["https://admin.example.com", "https://ops.example.com"],
    }
    custom = {**production, "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_SSL,on"}
    assert settings_of(custom, "SECURE_PROXY_SSL_HEADER") == {
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_SSL", "on"]
    }


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("DEBUG", "maybe", "The environment variable DEBUG is 'maybe': use 1 or 0"),
        ("SECURE_SSL_REDIRECT", "off!", "The environment variable SECURE_SSL_REDIRECT is 'off!'"),
        (
            "SECURE_HSTS_SECONDS",
            "1y",
            "The environment variable SECURE_HSTS_SECONDS is '1y': use a whole number of seconds.",
        ),
        (
            "SECURE_PROXY_SSL_HEADER",
            "X-Forwarded-Proto",
            "The environment variable SECURE_PROXY_SSL_HEADER is 'X-Forwarded-Proto': use the "
            "header as Django names it, e.g. HTTP_X_FORWARDED_PROTO",
        ),
    ],
)
def test_a_malformed_variable_fails_naming_it(tmp_path, name, value, message):
    env = clean_env(tmp_path, SECRET_KEY=secrets.token_urlsafe(60), **{name: value})

    result = manage(env, "check")

    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"django.core.exceptions.ImproperlyConfigured: {message}"), last


# The demo ------------------------------------------------------------------------------


def _venv() -> Path:
    """The virtualenv running these tests, which the demo reuses instead of installing."""
    venv = Path(sys.prefix)
    if sys.prefix == sys.base_prefix or not list(venv.glob(".installed-*")):
        pytest.skip(
            "the tests do not run in a virtualenv made by scripts/test.sh (no install stamp), "
            "so demo.sh would install packages"
        )
    return venv


def _stamps(venv: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in venv.glob(".installed-*")}


def _login_page(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/login/", timeout=2) as page:
            return page.status == 200 and 'name="username"' in page.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def running_demo(
    tmp_path: Path, database_url: str, *args: str, **variables: str
) -> Iterator[tuple[Path, Path]]:
    """``bash scripts/demo.sh ARGS`` with DATABASE_URL (and ``variables``) in its
    environment, until its admin answers.

    Yields the demo's SQLite file and its output; stops it as Ctrl+C does (SIGINT to
    its process group) on the way out.
    """
    venv = _venv()
    stamps = _stamps(venv)
    port = free_port()
    demo_db = tmp_path / "demo.sqlite3"
    log_path = tmp_path / "demo.log"
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(DATABASE_URL=database_url, DEMO_DB=str(demo_db), PORT=str(port), VENV=str(venv))
    env.update(variables)
    with open(log_path, "wb") as log:
        demo = subprocess.Popen(
            ["bash", "scripts/demo.sh", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def answers() -> bool:
        if demo.poll() is not None:
            raise AssertionError(
                f"demo.sh exited with {demo.returncode}:\n{log_path.read_text(errors='replace')}"
            )
        return _login_page(port)

    try:
        wait_for(answers, 120, f"the demo's login page on port {port}", interval=0.3)
        yield demo_db, log_path
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(30)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait(10)
    # The tests' virtualenv was neither reinstalled nor lost its stamp.
    assert _stamps(venv) == stamps
    assert "==> installing" not in log_path.read_text(errors="replace")


def _demo_users(demo_db: Path) -> list[tuple[str, int, int]]:
    connection = sqlite3.connect(demo_db)
    try:
        return connection.execute(
            "SELECT username, is_staff, is_superuser FROM auth_user"
        ).fetchall()
    finally:
        connection.close()


def _demo_jobs(demo_db: Path) -> list[str]:
    """The ids of the jobs the demo's scheduler stored (none before it is active)."""
    connection = sqlite3.connect(demo_db)
    try:
        return [row[0] for row in connection.execute("SELECT id FROM django_apscheduler_djangojob")]
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        connection.close()


@pytest.mark.integration
def test_demo_ignores_a_sqlite_database_url_from_the_shell(tmp_path):
    other = tmp_path / "elsewhere" / "production.sqlite3"
    other.parent.mkdir()

    # A broker too, as a Celery project's shell holds: without --fleet nothing is sent to it.
    broker = "redis://:pw-not-for-logs@127.0.0.1:1/0"
    with running_demo(tmp_path, f"sqlite:///{other}", CELERY_BROKER_URL=broker) as (
        demo_db,
        log_path,
    ):
        assert _demo_users(demo_db) == [("demo", 1, 1)]
        jobs = wait_for(lambda: _demo_jobs(demo_db), 30, "the demo's jobs stored")

    assert not other.exists()
    assert list(other.parent.iterdir()) == []
    output = log_path.read_text(errors="replace")
    assert "ignoring DATABASE_URL from your shell" in output
    assert f"Demo running on the SQLite file {demo_db}" in output
    assert str(other) not in output
    # The plain demo: no fleet, no fleet jobs.
    assert "ignoring CELERY_BROKER_URL from your shell" in output
    assert "pw-not-for-logs" not in output
    assert "jobs.heartbeat" in jobs
    assert not [job for job in jobs if "fleet" in job]
    assert "Fleet mode" not in output


@pytest.mark.integration
@pytest.mark.postgres
def test_demo_never_touches_a_postgresql_database_url_from_the_shell(tmp_path):
    with postgres_server() as server:
        server.create_database("production")
        # A production database as a developer would have it: migrated, with a real user.
        url = server.url("production")
        migrated = manage(
            {**clean_env(tmp_path), "DATABASE_URL": url, "SECRET_KEY": "x" * 60},
            "migrate",
            "--no-input",
            "-v",
            "0",
        )
        assert migrated.returncode == 0, migrated.stderr
        with server.connect("production") as connection:
            connection.execute(
                "INSERT INTO auth_user (username, password, is_superuser, is_staff, is_active, "
                "first_name, last_name, email, date_joined) "
                "VALUES ('alice', '!', false, true, true, '', '', '', now())"
            )

        def snapshot() -> dict:
            with server.connect("production") as connection:
                return {
                    "users": [
                        row["username"]
                        for row in connection.execute("SELECT username FROM auth_user")
                    ],
                    "migrations": connection.execute(
                        "SELECT count(*) AS n FROM django_migrations"
                    ).fetchone()["n"],
                    "instances": connection.execute(
                        "SELECT count(*) AS n FROM scheduler_schedulerinstance"
                    ).fetchone()["n"],
                    "jobs": connection.execute(
                        "SELECT count(*) AS n FROM django_apscheduler_djangojob"
                    ).fetchone()["n"],
                }

        before = snapshot()
        # With a password in it, as production URLs have: the demo must not print it.
        with_password = url.replace("postgres@", "postgres:pw-not-for-logs@")
        with running_demo(tmp_path, with_password) as (demo_db, log_path):
            assert _demo_users(demo_db) == [("demo", 1, 1)]
            during = snapshot()

        after = snapshot()

    assert (before["users"], before["instances"], before["jobs"]) == (["alice"], 0, 0)
    assert during == before  # no scheduler registered itself there while the demo ran
    assert after == before
    assert "pw-not-for-logs" not in log_path.read_text(errors="replace")


# The demo's fleet mode ------------------------------------------------------------------


def _demo_processes(mark: str, redis_port: int) -> list[str]:
    """The live processes of a demo, as "pid command line": those whose environment holds
    DEMO_TEST_MARK=``mark`` (all that the demo started, at any depth), and its Redis
    (which writes its title over its environment: found by its port)."""
    wanted = f"DEMO_TEST_MARK={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours
            continue
        ours = wanted in environ.split(b"\0")
        if ours or re.match(rf"\S*redis-server 127\.0\.0\.1:{redis_port}\b", command):
            found.append(f"{entry.name} {command}")
    return found


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _fleet_run(demo_db: Path) -> dict | None:
    """The first finished run of the demo's fleet job jobs.fleet_report, if any."""
    connection = sqlite3.connect(demo_db)
    connection.row_factory = sqlite3.Row
    try:
        row = connection.execute(
            "SELECT status, executor, hostname, pid, output FROM scheduler_jobrun "
            "WHERE job_id = 'jobs.fleet_report' AND finished_at IS NOT NULL ORDER BY id LIMIT 1"
        ).fetchone()
    finally:
        connection.close()
    return dict(row) if row else None


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux's /proc")
def test_demo_fleet_mode_runs_jobs_on_a_celery_worker_and_leaves_nothing_behind(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip(REDIS_NOT_FOUND)
    pytest.importorskip("celery", reason="Celery is not installed (requirements-dev.txt)")
    mark = secrets.token_hex(8)
    # A broker in the shell (a real fleet's): fleet mode uses its own Redis, not this one.
    elsewhere = "redis://:pw-not-for-logs@127.0.0.1:1/0"
    redis_port = 0
    try:
        with running_demo(
            tmp_path, "", "--fleet", CELERY_BROKER_URL=elsewhere, DEMO_TEST_MARK=mark
        ) as (demo_db, log_path):
            output = log_path.read_text(errors="replace")
            listens = re.search(r"Redis, the Celery broker, listens on 127\.0\.0\.1:(\d+)", output)
            assert listens, output
            redis_port = int(listens[1])
            worker = f"demo-worker@{socket.gethostname()}"
            assert f'"ran on {worker}" in the admin' in output

            run = wait_for(lambda: _fleet_run(demo_db), 60, "a finished run of jobs.fleet_report")
            running = _demo_processes(mark, redis_port)
        # Stopped as Ctrl+C stops it: nothing of it is left, and its Redis is gone.
        left = _demo_processes(mark, redis_port)
    finally:
        for process in _demo_processes(mark, redis_port):  # what a failure left behind
            os.kill(int(process.split()[0]), signal.SIGKILL)

    assert left == []
    assert not _redis_answers(redis_port)
    assert run["status"] == "succeeded", run
    assert run["executor"] == "celery"
    assert run["hostname"] == worker
    assert run["output"].startswith("report built by worker process ")
    # While it ran: Redis, and the worker with its two pool processes, besides the demo.
    assert sum("redis-server" in p for p in running) == 1, running
    assert sum("settings.celery worker" in p for p in running) == 3, running
    output = log_path.read_text(errors="replace")
    assert "ignoring CELERY_BROKER_URL from your shell" in output
    assert "pw-not-for-logs" not in output


def test_demo_fleet_mode_without_redis_says_what_to_install(tmp_path):
    """A machine without Redis: every tool of the PATH but redis-server."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for entry in os.scandir(directory):
            target = bin_dir / entry.name
            if entry.name != "redis-server" and not target.exists() and not target.is_symlink():
                target.symlink_to(entry.path)
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(PATH=str(bin_dir), DEMO_DB=str(tmp_path / "demo.sqlite3"), VENV=sys.prefix)
    assert shutil.which("redis-server", path=env["PATH"]) is None

    result = subprocess.run(
        ["bash", "scripts/demo.sh", "--fleet"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "demo.sh: fleet mode needs Redis: apt-get install redis-server",
        "  (redis-server is not on PATH; on macOS: brew install redis)",
    ]
    assert result.stdout == ""  # it stopped before doing anything
    assert not (tmp_path / "demo.sqlite3").exists()


def test_demo_refuses_an_unknown_argument(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    env.update(DEMO_DB=str(tmp_path / "demo.sqlite3"), VENV=sys.prefix)

    result = subprocess.run(
        ["bash", "scripts/demo.sh", "--flet"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 2
    assert result.stderr == "demo.sh: unknown argument '--flet' (the only one is --fleet)\n"
    assert not (tmp_path / "demo.sqlite3").exists()
