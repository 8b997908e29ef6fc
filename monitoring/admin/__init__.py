"""Admin registrations, one module per area (Django autodiscovers this package)."""

from django.contrib import admin
from django.urls import reverse_lazy
from django.utils.translation import gettext_lazy

from monitoring.admin import avatars, fal_record, task_queue, webhooks  # noqa: F401

# "View site" opens the staff dashboard: the site has no public pages.
# Lazy: the URLconf is not loaded yet. Django renders it as a string; its stubs want a str.
admin.site.site_url = reverse_lazy("admin:monitoring_dashboard")  # type: ignore[assignment]
# The header, the login page and the browser tab name the product, not Django.
admin.site.site_header = gettext_lazy("Avatar training monitor")
admin.site.site_title = gettext_lazy("Avatar training monitor")
admin.site.index_title = gettext_lazy("Staff tools")
