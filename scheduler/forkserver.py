"""Imported once by the fork server that ``isolation`` starts children from: Django and the
job modules, loaded before any child is forked, and no database connection left open.

Only the fork server imports this module (``multiprocessing``'s preload): importing it sets
Django up, which a process that already runs Django does not need.
"""

from __future__ import annotations

import django

django.setup()

from django.db import connections  # noqa: E402 - after setup: the apps must be ready

from scheduler.registry import autodiscover  # noqa: E402

autodiscover()
# What a child needs to run a job, imported here once rather than in every child: the
# runner's imports took about 20 ms of each run's start.
import scheduler.isolation  # noqa: E402, F401
import scheduler.runner  # noqa: E402, F401

connections.close_all()
