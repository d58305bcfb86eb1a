"""config.settings.production, loaded for real in a fresh interpreter as gunicorn would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

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
    "allowed_hosts": settings.ALLOWED_HOSTS,
    "database": settings.DATABASES["default"]["ENGINE"],
}))
"""
# Never reached: reading settings connects to nothing.
SERVICES = {
    "DATABASE_URL": "postgres://pleura@postgres.invalid:5432/pleura",
    "REDIS_URL": "redis://redis.invalid:6379/0",
}


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "SECRET_KEY", "STORAGE_", "S3_", "DATABASE_URL", "REDIS_URL", "LOG_"))
    }
    environment = {
        **base,
        **SERVICES,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "ALLOWED_HOSTS": "pleura.hospital.example",
        **env,
    }
    environment = {k: v for k, v in environment.items() if v is not None}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120
    )


def test_production_refuses_to_start_without_a_secret_key():
    result = _run(["-c", SETTINGS_DUMP])
    assert result.returncode == 1
    assert "The environment variable SECRET_KEY is required." in result.stderr


@pytest.mark.parametrize("unset", ["DATABASE_URL", "REDIS_URL"])
def test_production_refuses_to_start_on_the_development_database_or_broker(unset):
    """Unset, base.py would put patients' data in a SQLite file and the broker on disk."""
    result = _run(["-c", SETTINGS_DUMP], SECRET_KEY="x" * 60, **{unset: None})
    assert result.returncode == 1
    assert f"The environment variable {unset} is required." in result.stderr


def test_production_refuses_the_example_secret_key():
    result = _run(["-c", SETTINGS_DUMP], SECRET_KEY="CHANGE-ME-50-random-characters-from-openssl-rand-base64-48")
    assert result.returncode == 1
    assert "SECRET_KEY is still the example's placeholder: set 50+ random characters." in result.stderr


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("ALLOWED_HOSTS", "", "ALLOWED_HOSTS is required: the public host name(s), comma separated."),
    ("LOG_FORMAT", "xml", "LOG_FORMAT must be 'json' or 'plain', not 'xml'."),
    ("REDIS_URL", "http://cache.example:6379/0",
     "REDIS_URL must start with redis://, rediss:// or unix://, not 'http':."),
    ("CELERY_WORKER_MAX_MEMORY_PER_CHILD_MIB", "-1",
     "CELERY_WORKER_MAX_MEMORY_PER_CHILD_MIB must be at least 0, not '-1'."),
    ("TIME_ZONE", "Europe/Pariss", "TIME_ZONE must be an IANA time zone such as Europe/Paris, not 'Europe/Pariss'."),
])  # fmt: skip
def test_production_names_a_missing_or_wrong_setting_instead_of_a_traceback_later(variable, value, message):
    result = _run(["-c", SETTINGS_DUMP], SECRET_KEY="x" * 60, **{variable: value})
    assert result.returncode == 1
    assert message in result.stderr


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("SECRET_KEY", None, "The environment variable SECRET_KEY is required."),
    ("TIME_ZONE", "Mars/Olympus", "TIME_ZONE must be an IANA time zone such as Europe/Paris, not 'Mars/Olympus'."),
])  # fmt: skip
def test_manage_py_says_which_setting_is_wrong_in_one_line_without_a_traceback(variable, value, message):
    """`check --deploy` is the installer's first command: a traceback read as a crash
    (fresh-machine review)."""
    result = _run(["manage.py", "check", "--deploy"], **{"SECRET_KEY": "x" * 60, variable: value})
    assert result.returncode == 1
    assert result.stderr == f"Pleura's settings refused the environment: {message}\n"


def test_production_accepts_its_own_addresses_for_probes_and_scrapes():
    """Docker's healthcheck asks 127.0.0.1 and Prometheus the container's IP."""
    result = _run(["-c", SETTINGS_DUMP], SECRET_KEY="x" * 60)
    assert result.returncode == 0, result.stderr
    hosts = json.loads(result.stdout)["allowed_hosts"]
    own_ip = socket.gethostbyname(socket.gethostname())
    assert hosts[:4] == ["pleura.hospital.example", "127.0.0.1", "localhost", "[::1]"]
    assert own_ip in hosts


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


@pytest.mark.parametrize("entry_point", ["config.wsgi", "config.asgi"])
def test_the_server_entry_points_default_to_production_settings(entry_point):
    """config/__init__.py loads the Celery app first, whose default of local settings won:
    gunicorn started with DEBUG on and the public development key (fresh-machine review)."""
    probe = f"import {entry_point}; from django.conf import settings; print(settings.SETTINGS_MODULE, settings.DEBUG)"
    result = _run(["-c", probe], DJANGO_SETTINGS_MODULE=None, SECRET_KEY="k" * 50)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["config.settings.production", "False"]


@pytest.mark.parametrize(
    ("rate", "accepted"),
    [("banana", False), ("600", False), ("0/min", False), ("120/hour", True), ("600/minutes", True)],
)
def test_an_api_rate_pleura_cannot_read_stops_it_at_start_up(rate, accepted):
    """A typo passed `check` and made every request with a key a 500 (fresh-machine review)."""
    result = _run(["-c", SETTINGS_DUMP], SECRET_KEY="k" * 50, API_KEY_THROTTLE_RATE=rate)
    assert result.returncode == (0 if accepted else 1)
    if not accepted:
        assert (
            f"API_KEY_THROTTLE_RATE must be a number of requests per s, min, hour or day (600/min), not {rate!r}."
            in (result.stderr)
        )
