"""Jobs of the browser tests: a quick one, a slow-ish one and one that fails.

The tests run them with "Run now"; their schedules (which match the day of
history that setup_db.py writes) fill the dashboard's "Coming up" list, and a
fire time reached during a session changes nothing the tests look at.
"""

import time

from scheduler import cron

# The failing job's message: the admin must show it as text, never run it.
XSS = "<script>alert(1)</script>"


@cron("*/30 * * * *", id="browser.quick", timezone="Asia/Shanghai")
def quick() -> None:
    """Refresh the exchange-rate cache"""
    print("refreshed 12 rates")


@cron("0 */4 * * *", id="browser.slow")
def slow() -> None:
    """Rebuild the search index

    Takes two seconds: long enough to watch it run.
    """
    for step in range(1, 5):
        time.sleep(0.5)
        print(f"indexed batch {step}/4")


@cron("0 * * * *", id="browser.fail")
def fail() -> None:
    """Sync orders from the shop API"""
    print("calling the shop API")
    raise RuntimeError(f"the shop API answered {XSS}")
