"""The same date formats as English (avatarsite/formats/en/formats.py)."""

from avatarsite.formats.en.formats import *  # noqa: F403 (one style in both languages)
