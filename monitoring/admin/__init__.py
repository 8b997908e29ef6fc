"""Admin registrations, one module per area (Django autodiscovers this package)."""

from monitoring.admin import avatars, fal_record, webhooks  # noqa: F401
