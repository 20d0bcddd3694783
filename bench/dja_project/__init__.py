"""django-apscheduler set up as its README shows: ``python -m bench.dja_project runapscheduler``."""
