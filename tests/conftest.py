"""The fixed cast: two hospitals, a doctor, a radiologist and an admin in hospital A,
an outsider (a doctor of hospital B), a radiologist who reads for both, and a platform
superuser. Every test that checks access uses these people."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

import pytest

from hospital.models import Hospital, IntegrationKey, Membership, Role

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PASSWORD = "correct-horse-battery-9"


def missing(reason: str) -> NoReturn:
    """Something a test needs (a service, a program) is not here: skip locally, fail in
    CI, which must provide everything (.ci/run installs it)."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def needs_postgresql(why: str) -> None:
    """Unless the tests run on PostgreSQL: skip locally, fail in CI (`why`: what needs it)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        missing(f"PostgreSQL: {why}")


def require_service(url: str | None, name: str) -> str:
    """Return a reachable service URL; without one, skip locally and fail in CI."""
    if not url:
        missing(f"{name} URL not set")
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=2):
            pass
    except OSError as exc:
        missing(f"{name} at {parsed.hostname}:{parsed.port} not reachable: {exc}")
    return url


def at_once(call, copies: int = 2) -> tuple[list, list[Exception]]:
    """`copies` calls of `call()`, each in a thread (a database connection) of its own,
    started together: what they returned, and whatever they raised."""
    import threading

    from django.db import connections

    results, errors = [], []

    def run():
        try:
            results.append(call())
        except Exception as exc:  # surfaced by the caller's assertions
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results, errors


def stored_files(media_root: Path) -> frozenset[str]:
    """The names of the files under `media_root`, as the storage names them."""
    return frozenset(str(path.relative_to(media_root)) for path in Path(media_root).rglob("*") if path.is_file())


def unreachable_media_root(tmp_path: Path) -> Path:
    """A MEDIA_ROOT that cannot exist (its parent is a file): every read and write of the
    storage fails with an OSError, as an unmounted or broken disk's do."""
    unmounted = tmp_path / "unmounted"
    unmounted.write_text("a file where the storage's folder should be")
    return unmounted / "media"


@contextlib.contextmanager
def files_limited_to(size: int):
    """The kernel refuses to write past `size` bytes in any file of this process
    (EFBIG), as a full disk refuses a file midway."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def delete_redis_cache_keys(cache, pattern: str) -> None:
    """Delete the keys of a Redis `cache` whose full names match `pattern`. Never the
    cache's clear(): that is FLUSHDB, and in CI the same database holds the broker's
    queues and the pipeline's wake-up record."""
    client = cache._cache.get_client(write=True)
    keys = list(client.scan_iter(match=pattern))
    if keys:
        client.delete(*keys)


@pytest.fixture(autouse=True)
def _forget_studies_finished_in_earlier_tests():
    """A test database hands out the ids of rolled-back rows again; this process's record
    of finished studies must not outlive the test that finished them."""
    from diagnostics import pipeline

    pipeline.finished_here.clear()


@pytest.fixture(autouse=True)
def _ask_redis_and_the_broker_again():
    """A server one test found unanswering is skipped for seconds (config.fail_fast): not
    by the tests after it."""
    from config import cache
    from diagnostics import pipeline

    yield
    pipeline.broker_unanswered.reset()
    for skip in cache.unanswered.values():
        skip.reset()


@pytest.fixture
def redis_url() -> str:
    return require_service(os.environ.get("REDIS_URL"), "Redis")


@pytest.fixture
def hospital_a(db) -> Hospital:
    return Hospital.objects.create(name="St Mary's Hospital", slug="st-marys")


@pytest.fixture
def hospital_b(db) -> Hospital:
    return Hospital.objects.create(name="Riverside Clinic", slug="riverside")


def _member(django_user_model, email: str, hospital: Hospital, role: str, **extra):
    user = django_user_model.objects.create_user(email=email, password=PASSWORD, **extra)
    Membership.objects.create(user=user, hospital=hospital, role=role)
    return user


@pytest.fixture
def doctor(django_user_model, hospital_a):
    return _member(django_user_model, "doctor@stmarys.example", hospital_a, Role.DOCTOR)


@pytest.fixture
def radiologist(django_user_model, hospital_a):
    return _member(django_user_model, "radiologist@stmarys.example", hospital_a, Role.RADIOLOGIST)


@pytest.fixture
def hospital_admin(django_user_model, hospital_a):
    return _member(django_user_model, "admin@stmarys.example", hospital_a, Role.HOSPITAL_ADMIN, is_staff=True)


@pytest.fixture
def outsider(django_user_model, hospital_b):
    return _member(django_user_model, "doctor@riverside.example", hospital_b, Role.DOCTOR)


@pytest.fixture
def outsider_admin(django_user_model, hospital_b):
    return _member(django_user_model, "admin@riverside.example", hospital_b, Role.HOSPITAL_ADMIN, is_staff=True)


@pytest.fixture
def shared_radiologist(django_user_model, hospital_a, hospital_b):
    user = _member(django_user_model, "reader@both.example", hospital_a, Role.RADIOLOGIST)
    Membership.objects.create(user=user, hospital=hospital_b, role=Role.RADIOLOGIST)
    return user


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_superuser(email="ops@pleura.example", password=PASSWORD)


@pytest.fixture
def key_a(hospital_a) -> tuple[IntegrationKey, str]:
    return IntegrationKey.generate(hospital=hospital_a, name="EMR St Mary's")


@pytest.fixture
def key_b(hospital_b) -> tuple[IntegrationKey, str]:
    return IntegrationKey.generate(hospital=hospital_b, name="EMR Riverside")


@pytest.fixture
def client_for(client):
    """Log a cast member into the test client: `client_for(doctor)`."""

    def login(user):
        client.force_login(user)
        return client

    return login


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> None:
    """On SQLite, keep the test database in a file (not in memory) so that a real Celery
    worker process started by a test can open it; one private file per test session."""
    import tempfile

    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        folder = Path(tempfile.mkdtemp(prefix="pleura-test-db-"))
        database.setdefault("TEST", {})["NAME"] = str(folder / "test.sqlite3")


def storage_refuses(monkeypatch, *studies) -> None:
    """The storage refuses to read these studies' originals (a permission, S3's 403), and
    reads every other as usual."""
    from diagnostics import imaging

    real_read = imaging.read_original
    refused = {study.pk for study in studies}

    def read_original(other):
        if other.pk in refused:
            raise PermissionError(13, "Permission denied")
        return real_read(other)

    monkeypatch.setattr(imaging, "read_original", read_original)
