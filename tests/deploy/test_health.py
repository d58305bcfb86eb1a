"""/healthz and /readyz: unauthenticated, small JSON, honest about what is not ready."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from config.celery import app as celery_app
from diagnostics.health import file_sha256
from mlcore.models import ModelVersion


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"pretend weights " * 1000)
    return path


def _activate(weights_path, sha256: str) -> ModelVersion:
    return ModelVersion.objects.create(
        name="pleura-test",
        architecture="resnet18",
        image_size=224,
        weights_path=str(weights_path),
        weights_sha256=sha256,
        threshold=0.5,
        status=ModelVersion.Status.ACTIVE,
    )


def test_healthz_answers_ok_without_login_or_database(client):
    # No `db` fixture: any query would raise, so this also proves liveness needs no database.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response["Cache-Control"].startswith("max-age=0")


def test_readyz_is_ready_with_database_broker_and_valid_active_model(client, db, weights):
    _activate(weights, hashlib.sha256(weights.read_bytes()).hexdigest())
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "migrations": "ok", "broker": "ok", "model": "ok"},
    }


# A web process runs no model: a missing or changed weights file, or none active, took
# every web pod out of the Service, the portal and its uploads with it (ops review).
def test_readyz_stays_ready_but_degraded_without_an_active_model(client, db):
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "checks": {"database": "ok", "migrations": "ok", "broker": "ok", "model": "no active model"},
    }


def test_readyz_stays_ready_but_degraded_when_weights_do_not_match_their_hash(client, db, weights):
    _activate(weights, "0" * 64)
    response = client.get("/readyz")
    assert (response.status_code, response.json()["checks"]["model"]) == (200, "weights hash mismatch")


def test_readyz_stays_ready_but_degraded_when_weights_file_is_missing(client, db, tmp_path):
    _activate(tmp_path / "gone.pt", "0" * 64)
    response = client.get("/readyz")
    assert (response.status_code, response.json()["checks"]["model"]) == (200, "weights missing")


@pytest.mark.django_db(transaction=True)
def test_readyz_is_unavailable_while_a_migration_is_not_applied(client, monkeypatch):
    """New code started before the migrate job finished answered ready, then 500 to every
    upload (ops review)."""
    from django.core.management import call_command

    from diagnostics import health

    monkeypatch.setattr(health, "_migrated", threading.Event())  # a fresh process
    call_command("migrate", "diagnostics", "0007", verbosity=0)
    try:
        response = client.get("/readyz")
    finally:
        call_command("migrate", "diagnostics", verbosity=0)
    assert response.status_code == 503
    assert response.json()["checks"]["migrations"] == "pending"
    assert client.get("/readyz").json()["checks"]["migrations"] == "ok"


def test_readyz_stays_ready_but_degraded_when_the_broker_refuses_connections(client, db, weights):
    # Uploads still work without the broker (the sweeper queues them later): a web pod
    # must stay in the load balancer.
    _activate(weights, hashlib.sha256(weights.read_bytes()).hexdigest())
    response = _readyz_with_the_broker_down(client)
    assert response.status_code == 200
    assert response.json() == {
        "status": "degraded",
        "checks": {"database": "ok", "migrations": "ok", "broker": "unreachable", "model": "ok"},
    }


def _readyz_with_the_broker_down(client):
    original = celery_app.conf.broker_url
    celery_app.conf.broker_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    try:
        return client.get("/readyz")
    finally:
        celery_app.conf.broker_url = original


def test_weights_hash_is_cached_until_the_file_changes(weights):
    first = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_sha256(weights) == first
    stat = weights.stat()
    # Same size and same mtime: the probe trusts its cached hash and does not re-read.
    weights.write_bytes(b"P" + weights.read_bytes()[1:])
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(weights) == first
    # A new mtime (a replaced file) is hashed again.
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest() != first


def test_readyz_is_degraded_when_the_active_models_calibration_is_not_its_model_json(client, db, weights):
    """A migration taken back and forward again left the calibration at its default: the
    shipped model missed 48 pneumonias of the validation set instead of 20, and nothing said
    so (fresh-machine review)."""
    import hashlib
    import json

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    description = {"weights_sha256": digest, "threshold": 0.5, "temperature": 1.03, "logit_bias": 2.48}
    (weights.parent / "model.json").write_text(json.dumps(description))
    version = _activate(weights, digest)
    ModelVersion.objects.filter(pk=version.pk).update(temperature=1.03, logit_bias=2.48)
    assert client.get("/readyz").json()["checks"]["model"] == "ok"

    ModelVersion.objects.filter(pk=version.pk).update(logit_bias=0.0)  # what migrating back and forth leaves
    response = client.get("/readyz")

    assert (response.status_code, response.json()["checks"]["model"]) == (
        200,
        "operating point differs from model.json",
    )
