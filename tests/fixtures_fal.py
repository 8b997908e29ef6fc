"""Fixtures for fal: the queue emulator over HTTPS and webhook signing (engine issue)."""
