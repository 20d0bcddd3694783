"""The web side stands beside the runtime, not on it.

Every web worker imports the admin and the metrics view; it must not load the
scheduler's executor, worker pool, claims, results writer or output capture just to
file a request or read whether a scheduler is alive. Checked in a fresh interpreter, as a web
worker starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.proc.harness import ROOT

RUNTIME = (
    "scheduler.runner",
    "scheduler.pool",
    "scheduler.claims",
    "scheduler.results",
    "scheduler.capture",
    "scheduler.control",
    "scheduler.lease",
    "scheduler.service",
    "scheduler.jobstore",
    "scheduler.sync",
)

# As a web worker starts: django.setup() runs the admin's autodiscovery. (APScheduler's
# schedulers and executors are loaded there anyway, by django-apscheduler's own admin:
# its app is installed for its job table.)
PROBE = """
import json, sys
import django
django.setup()
import scheduler.admin, scheduler.requests, scheduler.health
import scheduler.templatetags.scheduler_admin
import scheduler.metrics, scheduler.views, scheduler.urls
print(json.dumps(sorted(sys.modules)))
"""


def test_the_admin_loads_no_part_of_the_runtime() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert "scheduler.admin" in loaded
    assert "scheduler.metrics" in loaded and "scheduler.views" in loaded
    runtime = [name for name in loaded if name.startswith(RUNTIME)]
    assert runtime == [], f"the web side loads the runtime: {runtime}"
