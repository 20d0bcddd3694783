"""The admin in a real browser: log in, dashboard, run now, pause/resume, a failed run,
Chinese, and axe-core's accessibility checks.

Screenshots of every page visited are saved into test-artifacts/browser/.
"""

from __future__ import annotations

import re

import pytest
from django.utils import translation

from tests.browser.conftest import PASSWORD, log_in
from tests.browser.jobs import XSS

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright==1.65.2)"
)
expect = sync_api.expect
expect.set_options(timeout=10_000)

pytestmark = pytest.mark.browser

DASHBOARD = "/admin/scheduler/dashboard/"
RUN_PAGE = re.compile(r"/admin/scheduler/jobrun/(\d+)/change/$")
# Longer than a run of the slow job (2 s) plus the scheduler's poll (0.2 s) and a page refresh.
RUN_TIMEOUT = 15_000


def job_page(job_id: str) -> str:
    return f"/admin/scheduler/job/{job_id}/change/"


def status_of(page):
    return page.locator(".field-status_badge .readonly")


def test_login_form(pages, shot):
    page = pages.new(logged_in=False)
    page.goto(DASHBOARD)
    expect(page).to_have_url(re.compile(r"/admin/login/\?next="))
    log_in(page, password=PASSWORD + "-wrong")
    expect(page.locator(".errornote")).to_contain_text("enter the correct username and password")
    shot(page, "login-failed")

    log_in(page)
    expect(page).to_have_url(re.compile(r"/admin/$"))
    expect(page.get_by_role("link", name="Dashboard")).to_be_visible()
    expect(page.get_by_role("link", name="Jobs")).to_be_visible()
    shot(page, "admin-index")


def test_dashboard_shows_the_scheduler_alive(pages, shot):
    page = pages.new()
    page.goto(DASHBOARD)
    expect(page.locator("h1")).to_have_text("Scheduler dashboard")
    shot(page, "dashboard", docs="dashboard.png")
    alive = page.locator(".scheduler-alive")
    expect(alive).to_contain_text("alive")
    expect(alive).to_contain_text(re.compile(r"active on .+:\d+, last heartbeat [\d.]+ s ago"))
    # No warning banner: the scheduler is running.
    expect(page.locator(".scheduler-health")).to_have_count(0)

    upcoming = page.locator("section[aria-labelledby=upcoming-heading]")
    for name in (
        "Refresh the exchange-rate cache",
        "Rebuild the search index",
        "Sync orders from the shop API",
    ):
        expect(upcoming.get_by_role("link", name=name)).to_be_visible()
    failing = page.locator("section[aria-labelledby=failing-heading]")
    expect(failing.get_by_role("link", name="Sync orders from the shop API")).to_be_visible()
    # The exception is shown as text, not run as markup.
    expect(failing).to_contain_text(XSS[:20])
    assert pages.dialogs == []


def test_run_now_is_run_by_the_scheduler(pages, shot):
    page = pages.new()
    page.goto(job_page("browser.slow"))
    page.get_by_role("button", name="Run now").click()

    expect(page).to_have_url(RUN_PAGE)
    expect(page.locator(".messagelist .success")).to_contain_text("Queued a run of browser.slow")
    expect(page.locator(".field-trigger .readonly")).to_have_text("manual")
    expect(page.locator(".field-requested_by .readonly")).to_have_text("admin")
    # Queued or already running: the page refreshes itself every second until it is done.
    expect(status_of(page)).to_have_text(re.compile(r"^(queued|running)$"))
    expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(1)
    shot(page, "run-in-progress")

    expect(status_of(page)).to_have_text("succeeded", timeout=RUN_TIMEOUT)
    expect(page.locator(".field-output_text pre")).to_contain_text("indexed batch 4/4")
    expect(page.locator(".field-hostname .readonly")).not_to_have_text("—")
    expect(page.locator('meta[http-equiv="refresh"]')).to_have_count(0)
    shot(page, "run-succeeded")


def test_pause_and_resume(pages, shot):
    page = pages.new()
    page.goto(job_page("browser.quick"))
    state = page.locator(".field-state .readonly")
    expect(state).to_have_text("active")

    page.get_by_role("button", name="Pause").click()
    expect(page.locator(".messagelist .success")).to_have_text("Paused browser.quick.")
    expect(state).to_contain_text("paused")
    expect(page.get_by_role("button", name="Resume")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    expect(page.get_by_text("Paused: it does not run until resumed.")).to_be_visible()
    # The running scheduler takes the change up within its poll interval.
    wait_applied(page, state, "paused")
    shot(page, "job-paused")

    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".messagelist .success")).to_have_text("Resumed browser.quick.")
    expect(page.get_by_role("button", name="Pause")).to_be_visible()
    wait_applied(page, state, "active")
    expect(page.locator(".scheduler-next-runs tbody tr")).to_have_count(5)


def wait_applied(page, state, expected: str) -> None:
    """Reload the job page until the scheduler has applied a pause or resume."""
    for _ in range(50):
        if state.inner_text().strip() == expected:
            return
        page.wait_for_timeout(200)
        page.reload()
    expect(state).to_have_text(expected)


def test_failed_run_shows_its_traceback_as_text(pages, shot):
    page = pages.new()
    page.goto(job_page("browser.fail"))
    page.get_by_role("button", name="Run now").click()
    expect(page).to_have_url(RUN_PAGE)
    expect(status_of(page)).to_have_text("failed", timeout=RUN_TIMEOUT)

    exception = page.locator(".field-exception_text pre")
    expect(exception).to_have_text(f"RuntimeError: the shop API answered {XSS}")
    traceback = page.locator(".field-traceback_text pre")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text(f"RuntimeError: the shop API answered {XSS}")
    expect(page.locator(".field-output_text pre")).to_have_text("calling the shop API")
    # Shown, not run: no script element came out of the run's text, and no alert fired.
    expect(page.locator("script:not([src])")).to_have_count(0)
    assert pages.dialogs == []
    shot(page, "run-failed")

    # The job page lists it, as text too.
    page.goto(job_page("browser.fail"))
    expect(page.locator(".scheduler-recent-runs tbody tr").first).to_contain_text(XSS)
    assert pages.dialogs == []


def zh(text: str) -> str:
    with translation.override("zh-hans"):
        return translation.gettext(text)


def test_dashboard_in_chinese(pages, shot):
    page = pages.new()
    page.goto(DASHBOARD)
    # The language form of django.conf.urls.i18n, as a site's language menu would post it.
    page.evaluate(
        """() => {
            const form = document.createElement("form");
            form.method = "post";
            form.action = "/i18n/setlang/";
            const fields = {
                csrfmiddlewaretoken: document.cookie.match(/csrftoken=([^;]+)/)[1],
                language: "zh-hans",
                next: location.pathname,
            };
            for (const [name, value] of Object.entries(fields)) {
                const input = document.createElement("input");
                input.type = "hidden";
                input.name = name;
                input.value = value;
                form.appendChild(input);
            }
            document.body.appendChild(form);
            form.submit();
        }"""
    )
    expect(page.locator("html")).to_have_attribute("lang", "zh-hans")
    expect(page).to_have_url(re.compile(re.escape(DASHBOARD) + "$"))
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    assert cookies.get("django_language") == "zh-hans"

    headings = {
        "alive-heading": "Scheduler",
        "day-heading": "Runs in the last 24 hours",
        "failing-heading": "Failing now",
        "upcoming-heading": "Coming up",
        "slowest-heading": "Slowest jobs (last 24 hours)",
    }
    for element_id, english in headings.items():
        chinese = zh(english)
        assert chinese != english and re.search(r"[\u4e00-\u9fff]", chinese), (
            f"no Chinese translation of {english!r}"
        )
        expect(page.locator(f"#{element_id}")).to_have_text(chinese)
    expect(page.locator("h1")).to_have_text(zh("Scheduler dashboard"))
    expect(page.locator(".scheduler-alive")).to_contain_text(zh("alive"))
    shot(page, "dashboard-zh-hans")

    # The job page too, with the schedule worded in Chinese by cron-descriptor.
    page.goto(job_page("browser.quick"))
    expect(page.get_by_role("button", name=zh("Run now"))).to_be_visible()
    expect(page.locator(".field-schedule_in_words .readonly")).to_contain_text("分钟")
    shot(page, "job-zh-hans")


AXE_PAGES = {
    "dashboard": DASHBOARD,
    "job": job_page("browser.quick"),
    "runs": "/admin/scheduler/jobrun/",
}


@pytest.mark.parametrize("name", list(AXE_PAGES))
def test_no_serious_accessibility_violations(pages, shot, axe_source, name):
    page = pages.new()
    page.goto(AXE_PAGES[name])
    page.add_script_tag(content=axe_source)
    results = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    problems = [v for v in results["violations"] if v["impact"] in ("serious", "critical")]
    report = "\n".join(
        f"{v['impact']}: {v['id']} ({v['help']}): "
        + "; ".join(f"{' '.join(n['target'])} {n['html'][:120]}" for n in v["nodes"][:5])
        for v in results["violations"]
    )
    print(f"\naxe-core {results['testEngine']['version']} on {name}:\n{report or 'no violations'}")
    if name == "job":
        shot(page, "job", docs="job.png")
    assert not problems, report
