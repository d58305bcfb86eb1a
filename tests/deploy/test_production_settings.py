"""config.settings.production, loaded for real in a fresh interpreter as gunicorn would."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

# Reading settings imports only the settings modules: fast, and enough to see what they decide.
SETTINGS_DUMP = """
import json
from django.conf import settings
storage = settings.STORAGES["default"]
print(json.dumps({
    "storage": storage["BACKEND"],
    "options": storage.get("OPTIONS", {}),
    "accel": settings.PROTECTED_MEDIA_ACCEL_PREFIX,
    "formatter": settings.LOGGING["handlers"]["console"]["formatter"],
    "exempt": settings.SECURE_REDIRECT_EXEMPT,
    "debug": settings.DEBUG,
}))
"""


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECRET_KEY", "STORAGE_", "S3_"))}
    environment = {
        **base,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "ALLOWED_HOSTS": "pleura.hospital.example",
        **env,
    }
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_production_refuses_to_start_without_a_secret_key():
    result = _run(["-c", SETTINGS_DUMP])
    assert result.returncode == 1
    assert "The environment variable SECRET_KEY is required." in result.stderr


def test_production_defaults_to_json_logs_and_nginx_streamed_filesystem_media():
    result = _run(["-c", SETTINGS_DUMP], SECRET_KEY="x" * 60)
    assert result.returncode == 0, result.stderr
    dumped = json.loads(result.stdout)
    assert dumped["storage"] == "django.core.files.storage.FileSystemStorage"
    assert dumped["accel"] == "/_protected"
    assert dumped["formatter"] == "json"
    assert dumped["exempt"] == [r"^healthz$", r"^readyz$", r"^metrics$"]
    assert dumped["debug"] is False


def test_s3_storage_is_private_encrypted_and_signed():
    result = _run(
        ["-c", SETTINGS_DUMP],
        SECRET_KEY="x" * 60,
        STORAGE_BACKEND="s3",
        S3_BUCKET="pleura-media",
        S3_ENDPOINT_URL="https://objects.hospital.example",
    )
    assert result.returncode == 0, result.stderr
    dumped = json.loads(result.stdout)
    assert dumped["storage"] == "storages.backends.s3.S3Storage"
    options = dumped["options"]
    assert options["bucket_name"] == "pleura-media"
    assert options["endpoint_url"] == "https://objects.hospital.example"
    assert options["default_acl"] == "private"
    assert options["querystring_auth"] is True
    assert options["querystring_expire"] == 60
    assert options["object_parameters"] == {"ServerSideEncryption": "AES256"}


def test_unknown_storage_backend_is_refused_at_start():
    result = _run(["-c", SETTINGS_DUMP], SECRET_KEY="x" * 60, STORAGE_BACKEND="ftp")
    assert result.returncode == 1
    assert "STORAGE_BACKEND must be 'filesystem' or 's3', not 'ftp'." in result.stderr
