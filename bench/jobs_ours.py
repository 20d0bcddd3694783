"""This project's bench jobs (``SCHEDULER["JOB_MODULES"]`` of bench/ours_settings.py)."""

from bench.workload import declare_ours

declare_ours()
