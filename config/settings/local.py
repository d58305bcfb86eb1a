"""Developer machine: `make run`. Runs with nothing installed (SQLite, filesystem broker)."""

from __future__ import annotations

from config.settings.base import *  # noqa: F403
from config.settings.env import env_bool

DEBUG = env_bool("DEBUG", True)
