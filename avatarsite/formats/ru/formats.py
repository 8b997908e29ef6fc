"""One date format on every staff page, in both languages: the one our own pages write
("2026-12-01 19:02:14", UTC), so a list and an avatar page never show two styles."""

from avatarsite.formats.en.formats import *  # noqa: F403 (one style in both languages)
