"""URL routes. ``/webhooks/fal/`` and ``/healthz`` are exempt from the SSL redirect."""

from django.contrib import admin
from django.urls import path

from monitoring import views as monitoring_views

urlpatterns = [
    path("webhooks/fal/", monitoring_views.fal_webhook, name="fal-webhook"),
    path("healthz", monitoring_views.healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
