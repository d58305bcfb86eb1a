"""`make run` may run on a shared workstation: what it stores of a patient is readable by
its own user only (PHI review: originals were 0644 in 0755 folders)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from tests.conftest import REPO_ROOT

SAVE_AN_ORIGINAL = """
import os, stat, sys
import django
django.setup()
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
storage = FileSystemStorage(location=sys.argv[1])
name = storage.save("studies/hospital/study/original.png", ContentFile(b"pixels"))
for path in (storage.path(name), os.path.dirname(storage.path(name)), os.path.join(sys.argv[1], "studies")):
    print(oct(stat.S_IMODE(os.stat(path).st_mode)))
"""


def test_make_runs_originals_and_their_folders_are_its_users_alone(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SAVE_AN_ORIGINAL, str(tmp_path / "media")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.local"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0o600", "0o700", "0o700"]


def test_make_migrate_creates_the_database_for_its_user_alone(tmp_path):
    """The SQLite database comes from the umask the Makefile sets, whatever the shell's."""
    database = tmp_path / "pleura.sqlite3"
    result = subprocess.run(
        ["bash", "-c", "umask 022; make --no-print-directory migrate"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.local", "DATABASE_URL": f"sqlite:///{database}"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert oct(stat.S_IMODE(database.stat().st_mode)) == "0o600"
