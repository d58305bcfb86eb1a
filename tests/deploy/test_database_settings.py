"""The database settings `make run` gets on SQLite, loaded in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

OPTIONS_DUMP = (
    "import json; from django.conf import settings; print(json.dumps(settings.DATABASES['default']['OPTIONS']))"
)


def _sqlite_options(database_url: str) -> dict:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.local", "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "-c", OPTIONS_DUMP], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_sqlite_transactions_take_the_write_lock_at_once_and_wait_for_it(tmp_path):
    options = _sqlite_options(f"sqlite:///{tmp_path / 'pleura.sqlite3'}")
    assert options == {"transaction_mode": "IMMEDIATE", "timeout": 20}


def test_sqlite_options_given_in_the_database_url_win(tmp_path):
    options = _sqlite_options(f"sqlite:///{tmp_path / 'pleura.sqlite3'}?timeout=1")
    assert options == {"transaction_mode": "IMMEDIATE", "timeout": 1}
