"""Settings for the test suite: the real settings, with test defaults in the environment.

Only defaults: ``bin/test`` and CI may override any of them (DATABASE_URL above all).
"""

import os

_TEST_ENV = {
    "DEBUG": "0",
    "SECRET_KEY": "test-secret-key-that-is-long-enough-for-django-checks-0123456789",
    "ALLOWED_HOSTS": "testserver,localhost,127.0.0.1",
    "SECURE_SSL_REDIRECT": "0",
    "FAL_KEY": "test-key-id:test-key-secret-value",
    "PUBLIC_BASE_URL": "http://testserver",
    "NOTIFICATION_BACKEND": "locmem",
    "DATABASE_URL": "postgres://root@127.0.0.1:5432/root",
    "LOG_LEVEL": "INFO",
    # Pages that reload themselves would reload under a test's feet.
    "ADMIN_REFRESH_SECONDS": "0",
    # Tests complete trainings with made-up fal URLs: worker processes must not try to
    # download them from the internet. Tests of kept files turn it on (tests/test_files.py).
    "AVATAR_FILES_COPY": "0",
    # Each API call recorded with its call, so that a test sees it at once
    # (tests/test_api_contract.py turns batches on).
    "API_CALL_LOG_FLUSH_SECONDS": "0",
    # The owner's live progress message adds a message and edits to every training:
    # its own tests turn it on (tests/test_owner_progress.py).
    "OWNER_PROGRESS_MESSAGES": "0",
}
for _name, _value in _TEST_ENV.items():
    os.environ.setdefault(_name, _value)

from avatarsite.settings import *  # noqa: E402,F403

# Tests render pages without running collectstatic.
STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# No collectstatic before tests: whitenoise looks files up lazily instead of warning
# at start-up that STATIC_ROOT does not exist.
WHITENOISE_AUTOREFRESH = True
