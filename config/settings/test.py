"""Test profile: SQLite and a filesystem broker unless DATABASE_URL / REDIS_URL are set."""

from __future__ import annotations

import tempfile
from pathlib import Path

from config.settings.base import *  # noqa: F403
from config.settings.env import env_str

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", tempfile.mkdtemp(prefix="pleura-test-media-")))
if CELERY_BROKER_URL.startswith("filesystem://") and not env_str("BROKER_DIR", ""):  # noqa: F405
    # Messages the tests publish with no worker of their own (an upload's wake-up) go
    # to a folder of this run, not var/broker, where `make run`'s worker would take them.
    BROKER_DIR = Path(tempfile.mkdtemp(prefix="pleura-test-broker-"))
    for folder in ("out", "processed", "control"):
        (BROKER_DIR / folder).mkdir()
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker_options(BROKER_DIR)  # noqa: F405
