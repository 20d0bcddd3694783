from django.apps import AppConfig
from django.core import checks
from django.utils.translation import gettext_lazy as _


class SchedulerConfig(AppConfig):
    name = "scheduler"
    verbose_name = _("Scheduler")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from scheduler.checks import check_alerts, check_jobs, check_settings

        # Tagged, so that ``manage.py check --tag scheduler`` runs only these.
        checks.register(check_settings, "scheduler")
        checks.register(check_jobs, "scheduler")
        checks.register(check_alerts, "scheduler")
