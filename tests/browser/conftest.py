"""Fixtures of the browser tests: the real admin and scheduler, driven by Debian's Chromium.

One session starts, on a fresh migrated SQLite file:

- ``manage.py runserver`` (the admin, static files included) on a free port,
- ``manage.py runapscheduler`` with the jobs of ``tests/browser/jobs.py``, polling
  for "Run now" every 0.2 s,

and one headless Chromium through Playwright. Screenshots and the servers' logs
go to ``test-artifacts/browser/`` (printed at the end of the run). Every process
started here is stopped at the end of the session.

Set ``SCHEDULER_UPDATE_SCREENSHOTS=1`` to also refresh ``docs/screenshots/``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path(os.environ.get("SCHEDULER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "scheduler-tests"
    / "axe-core"
)
USERNAME = "admin"
PASSWORD = "browser-tests-only"  # a throwaway login on a temporary database
VIEWPORT = {"width": 1280, "height": 900}

# Variables of this process that must not reach the servers.
_LEAKY = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "SCHEDULER_TEST_DIR", "PYTHONUNBUFFERED")
_used_artifacts = False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "browser: drives the admin in Chromium (Playwright) against real runserver and "
        "runapscheduler processes",
    )


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _used_artifacts:
        terminalreporter.write_sep("-", "browser tests")
        terminalreporter.write_line(f"screenshots and server logs: {ARTIFACTS}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    """On failure, screenshot the test's open pages and attach the servers' logs."""
    report = yield
    if report.when == "call" and report.failed and "pages" in getattr(item, "funcargs", {}):
        for index, context in enumerate(item.funcargs["pages"].contexts):
            for number, page in enumerate(context.pages):
                path = ARTIFACTS / f"FAILED-{item.name}-{index}-{number}.png"
                try:
                    page.screenshot(path=str(path), full_page=True)
                    report.sections.append(("screenshot", f"{path} ({page.url})"))
                except Exception as exc:  # a closed page, a navigation in flight
                    report.sections.append(("screenshot", f"{path}: {exc}"))
        for name in ("runapscheduler", "runserver"):
            log = ARTIFACTS / f"{name}.log"
            if log.exists():
                report.sections.append((f"log {name}", log.read_text(errors="replace")[-5000:]))
    return report


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Server:
    """The admin and the scheduler on one database; ``url`` is the admin's base URL."""

    directory: Path
    url: str = ""
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    @property
    def db_path(self) -> Path:
        return self.directory / "db.sqlite3"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _LEAKY}
        env.update(
            DJANGO_SETTINGS_MODULE="tests.proc.settings",
            DATABASE_URL=f"sqlite:///{self.db_path}",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            TIME_ZONE="UTC",
            SCHEDULER_JOB_MODULES="tests.browser.jobs",
            SCHEDULER_POLL_INTERVAL="0.2",
            SCHEDULER_SHUTDOWN_GRACE="2",
            BROWSER_USERNAME=USERNAME,
            BROWSER_PASSWORD=PASSWORD,
            PYTHONUNBUFFERED="1",
        )
        return env

    def log_path(self, name: str) -> Path:
        return ARTIFACTS / f"{name}.log"

    def log(self, name: str) -> str:
        try:
            return self.log_path(name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def manage(self, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        self.log_path("setup").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, f"manage.py {' '.join(args)}:\n{result.stderr}"

    def start(self, name: str, *args: str) -> subprocess.Popen:
        with open(self.log_path(name), "wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "manage.py", *args],
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append((name, popen))
        return popen

    def wait_log(self, name: str, popen: subprocess.Popen, line: str, timeout: float = 30) -> None:
        def seen() -> bool:
            if line in self.log(name):
                return True
            if popen.poll() is not None:
                raise AssertionError(f"{name} exited with {popen.returncode}:\n{self.log(name)}")
            return False

        wait_for(seen, timeout, f"{line!r} in {self.log_path(name)}")

    def wait_http(self, popen: subprocess.Popen, timeout: float = 30) -> None:
        def answers() -> bool:
            if popen.poll() is not None:
                raise AssertionError(f"runserver exited:\n{self.log('runserver')}")
            try:
                with urllib.request.urlopen(f"{self.url}/admin/login/", timeout=2) as response:
                    return response.status == 200
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_for(answers, timeout, f"{self.url}/admin/login/ to answer")

    def stop(self) -> None:
        for _name, popen in self.processes:
            if popen.poll() is None:
                popen.terminate()
        for _name, popen in self.processes:
            try:
                popen.wait(10)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    global _used_artifacts
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    _used_artifacts = True
    return ARTIFACTS


@pytest.fixture(scope="session")
def server(artifacts: Path) -> Iterator[Server]:
    """runserver + runapscheduler on a fresh database with an admin login and a day of history."""
    with tempfile.TemporaryDirectory(prefix="scheduler-browser-") as directory:
        server = Server(Path(directory))
        try:
            server.manage("shell", "-c", "from tests.browser.setup_db import run; run()")
            scheduler = server.start("runapscheduler", "runapscheduler")
            port = _free_port()
            server.url = f"http://127.0.0.1:{port}"
            # --insecure: serve the admin's static files with DEBUG off.
            web = server.start("runserver", "runserver", "--noreload", "--insecure", str(port))
            server.wait_log("runapscheduler", scheduler, "Active scheduler now")
            server.wait_http(web)
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright==1.65.2)"
    )
    playwright = sync_api.sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


def log_in(page: Any, password: str = PASSWORD) -> None:
    """Log in through the admin's login form."""
    page.goto("/admin/")
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


@pytest.fixture(scope="session")
def login_state(browser: Any, server: Server) -> dict:
    """The cookies of one session opened through the login form, shared by the tests."""
    context = browser.new_context(base_url=server.url, viewport=VIEWPORT, locale="en-US")
    try:
        page = context.new_page()
        log_in(page)
        assert "/admin/login/" not in page.url, f"login failed: {page.url}"
        return context.storage_state()
    finally:
        context.close()


class Pages:
    """Opens pages in new browser contexts (English unless told otherwise) on the test server.

    Every JavaScript dialog is dismissed and recorded in ``dialogs``.
    """

    def __init__(self, browser: Any, server: Server, login_state: dict) -> None:
        self.browser = browser
        self.server = server
        self.login_state = login_state
        self.contexts: list[Any] = []
        self.dialogs: list[str] = []

    def new(self, logged_in: bool = True) -> Any:
        context = self.browser.new_context(
            base_url=self.server.url,
            viewport=VIEWPORT,
            locale="en-US",
            storage_state=self.login_state if logged_in else None,
        )
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        page = context.new_page()
        page.on("dialog", self._on_dialog)
        return page

    def _on_dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def pages(browser: Any, server: Server, login_state: dict) -> Iterator[Pages]:
    pages = Pages(browser, server, login_state)
    try:
        yield pages
    finally:
        pages.close()


@pytest.fixture
def shot(artifacts: Path) -> Callable[..., Path]:
    """``shot(page, name)`` saves a full-page PNG into the artifacts folder."""

    def take(page: Any, name: str, docs: str | None = None) -> Path:
        path = artifacts / f"{name}.png"
        # A viewport as tall as the page rather than full_page=True: the admin's
        # sidebar is as tall as the viewport and would stop halfway down the image.
        height = page.evaluate("() => document.documentElement.scrollHeight")
        page.set_viewport_size({**VIEWPORT, "height": max(VIEWPORT["height"], height)})
        try:
            page.screenshot(path=str(path))
        finally:
            page.set_viewport_size(VIEWPORT)
        if docs and os.environ.get("SCHEDULER_UPDATE_SCREENSHOTS") == "1":
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS_SCREENSHOTS / docs)
        return path

    return take


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's ``axe.min.js``, fetched from the npm registry once into a cache folder."""
    script = AXE_CACHE / "axe.min.js"
    if not script.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot fetch axe-core for the accessibility checks")
        AXE_CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as directory:
            try:
                result = subprocess.run(
                    [npm, "pack", "axe-core@4", "--json", "--pack-destination", directory],
                    cwd=directory,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            except subprocess.TimeoutExpired:
                pytest.skip("npm pack axe-core@4 timed out (no access to the npm registry?)")
            if result.returncode != 0:
                pytest.skip(f"npm pack axe-core@4 failed: {result.stderr.strip()[-500:]}")
            packed = json.loads(result.stdout)[0]
            with tarfile.open(Path(directory) / packed["filename"]) as archive:
                member = archive.extractfile("package/axe.min.js")
                assert member is not None, "axe.min.js missing from the axe-core package"
                script.with_suffix(".tmp").write_bytes(member.read())
            (AXE_CACHE / "VERSION").write_text(packed["version"] + "\n")
            script.with_suffix(".tmp").replace(script)
    return script.read_text()
