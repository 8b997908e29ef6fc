"""Admin registrations, one module per area (Django autodiscovers this package)."""

from monitoring.admin import avatars, fal_record, task_queue, webhooks  # noqa: F401
