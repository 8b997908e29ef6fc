"""django-q2 schedules, created or updated by ``migrate`` (built by the engine issue)."""


def ensure_schedules(**kwargs) -> None:
    """post_migrate receiver: set-up twice leaves one schedule of each name."""
