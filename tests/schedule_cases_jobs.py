"""A job module declaring every case of tests/schedule_cases.py (for ``runapscheduler --list``)."""

from tests.schedule_cases import declare_all

declare_all()
