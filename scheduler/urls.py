"""The scheduler's URLs outside the admin: ``path("scheduler/", include("scheduler.urls"))``
in a project's URLconf serves the Prometheus metrics at ``/scheduler/metrics``."""

from django.urls import path

from scheduler.views import metrics

urlpatterns = [
    path("metrics", metrics, name="scheduler-metrics"),
]
