from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    # The Prometheus metrics: /scheduler/metrics (README, "Monitoring and alerts").
    path("scheduler/", include("scheduler.urls")),
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
]
