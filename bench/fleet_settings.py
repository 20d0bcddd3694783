"""This project's settings in the fleet scenarios (7, 7b): bench/ours_settings.py's, with
the jobs of bench/jobs_fleet.py sent to the Celery app of bench/fleet_app.py.

The scheduler (``runapscheduler``) and the Celery workers of both systems run with them
(the workers need the database: this project's task records each outcome in its row).
"""

from bench.ours_settings import *  # noqa: F403

SCHEDULER = {"JOB_MODULES": ["bench.jobs_fleet"], "CELERY_APP": "bench.fleet_app:app"}
