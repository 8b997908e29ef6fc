"""Admin registrations, one module per area (Django autodiscovers this package)."""

from monitoring.admin import avatars, webhooks  # noqa: F401
