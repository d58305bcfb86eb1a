"""Developer machine: `make run`. Runs with nothing installed (SQLite, filesystem broker)."""

from __future__ import annotations

from config.settings.base import *  # noqa: F403
from config.settings.env import env_bool

DEBUG = env_bool("DEBUG", True)

# Uploaded originals and the pictures drawn from them hold patient data, and `make run` may
# run on a shared workstation: readable by this user only (files were 0644 in 0755
# folders, PHI review). The SQLite database and the broker's messages get the same from
# the umask that the Makefile and scripts/run-local.sh set. In production each container
# has its own users, and nginx reads media for X-Accel-Redirect.
FILE_UPLOAD_PERMISSIONS = 0o600
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o700
