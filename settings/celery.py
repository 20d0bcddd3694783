"""The example project's Celery app, as Celery's Django guide has it: the worker fleet of
``executor="celery"`` (``scripts/demo.sh --fleet`` starts Redis and one worker with it).

    CELERY_BROKER_URL=redis://127.0.0.1:6379/0 celery -A settings.celery worker

Its configuration is the CELERY_* settings (settings/__init__.py), the broker from the
environment variable CELERY_BROKER_URL; the scheduler's task (``scheduler.worker``) is
included, and the scheduler sends runs with this app (``SCHEDULER["CELERY_APP"]``).
"""

import os

from celery import Celery
from django.core.exceptions import ImproperlyConfigured

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

if not os.environ.get("CELERY_BROKER_URL", "").strip():
    # Celery would otherwise try a RabbitMQ on localhost, and say so only in its retries.
    raise ImproperlyConfigured(
        "The Celery app settings.celery needs a broker: set the environment variable "
        "CELERY_BROKER_URL (such as redis://127.0.0.1:6379/0)."
    )

app = Celery("settings", include=["scheduler.worker"])
app.config_from_object("django.conf:settings", namespace="CELERY")
