"""Test profile: SQLite and a filesystem broker unless DATABASE_URL / REDIS_URL are set."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from config.settings.base import *  # noqa: F403
from config.settings.env import env_str


def _folder_of_this_process(prefix: str) -> Path:
    """A temporary folder, removed when the process that made it ends (each test run
    and each worker it starts made one of about 0.7 MB that stayed in /tmp)."""
    folder, maker = Path(tempfile.mkdtemp(prefix=prefix)), os.getpid()

    def remove() -> None:
        if os.getpid() == maker:  # not a forked child (a worker's pool process) ending
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(remove)
    return folder


DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", "") or _folder_of_this_process("pleura-test-media-"))
if CELERY_BROKER_URL.startswith("filesystem://") and not env_str("BROKER_DIR", ""):  # noqa: F405
    # Messages the tests publish with no worker of their own (an upload's wake-up) go
    # to a folder of this run, not var/broker, where `make run`'s worker would take them.
    BROKER_DIR = _folder_of_this_process("pleura-test-broker-")
    for folder in ("out", "processed", "control"):
        (BROKER_DIR / folder).mkdir()
    CELERY_BROKER_TRANSPORT_OPTIONS = filesystem_broker_options(BROKER_DIR)  # noqa: F405
