"""URL routes. ``/webhooks/fal/``, ``/healthz`` and ``/metrics`` are exempt from the SSL redirect."""

from django.contrib import admin
from django.urls import path

from monitoring import file_views
from monitoring.api.views import api
from monitoring.fal import views
from monitoring.ops import health, metrics

urlpatterns = [
    path("webhooks/fal/", views.fal_webhook, name="fal-webhook"),
    path("healthz", health.healthz, name="healthz"),
    path("metrics", metrics.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
    # Signed, expiring links to kept avatar files (monitoring.files).
    path("files/<str:token>/<str:filename>", file_views.serve, name="avatar-file"),
]
