"""URL routes. ``/webhooks/fal/`` and ``/healthz`` are exempt from the SSL redirect."""

from django.contrib import admin
from django.urls import path

from monitoring.api.views import api
from monitoring.fal import views
from monitoring.ops import health

urlpatterns = [
    path("webhooks/fal/", views.fal_webhook, name="fal-webhook"),
    path("healthz", health.healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("api/v1/", api.urls),
]
