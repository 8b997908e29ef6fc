"""Fixtures for Telegram: the fake Bot API on loopback (notifications issue)."""
