"""Operations at the side of the domain: health, dashboard figures, retention, the
periodic schedules and Django system checks."""
