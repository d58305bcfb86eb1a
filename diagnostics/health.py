"""Liveness and readiness probes for load balancers, Kubernetes and the smoke test.

Both answer without authentication, so they say only "ok" or a short reason: never a
hostname, a path, a version name or anything about patients.

- `/healthz`: the process answers HTTP. Nothing else is touched, so a slow database
  never gets a healthy pod killed.
- `/readyz`: this process can do its job: the database answers and holds every
  migration this code needs (a pod of new code started before the migrate job finished
  answered ready and then 500 to every upload: ops review). It also says whether the
  Celery broker accepts a connection and whether the active model's weights file is
  present with the sha256 the registry recorded, but neither leaves the process unready
  ("degraded", still 200): a web process runs no model, uploads made meanwhile are
  stored, and the sweeper queues them once the broker is back or workers predict them
  once a model loads. Failing readiness for either took every web pod out of the load
  balancer, and with them the portal and the uploads (ops review); the alerts
  PleuraPipelineStalled and PleuraNoUsableModel say what is out.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
from pathlib import Path

from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from mlcore.models import ModelVersion

logger = logging.getLogger(__name__)

# Seconds the broker may take to accept a connection before the probe says no; kept
# well under the Kubernetes probe timeout (5 s in deploy/k8s).
BROKER_TIMEOUT_SECONDS = 2.0

OK = "ok"
# Without these this process cannot take a request; the broker and the model are reported.
REQUIRED_CHECKS = ("database", "migrations")

# (path, mtime_ns, size) -> sha256: hashing ~50 MB of weights on every probe would cost
# ~0.1 s of CPU each time, so a file is hashed again only when it changes.
_hash_cache: dict[tuple[str, int, int], str] = {}
_hash_lock = threading.Lock()


@never_cache
@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": OK})


@never_cache
@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    database = _check_database()
    migrations = _check_migrations() if database == OK else "unknown"
    checks = {"database": database, "migrations": migrations, "broker": _check_broker(), "model": _check_model()}
    if any(checks[name] != OK for name in REQUIRED_CHECKS):
        return JsonResponse({"status": "unavailable", "checks": checks}, status=503)
    status = OK if all(result == OK for result in checks.values()) else "degraded"
    return JsonResponse({"status": status, "checks": checks})


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception:
        logger.warning("readyz: database unreachable", exc_info=True)
        return "unreachable"
    return OK


# Set once this process has found every migration applied: they are never unapplied under
# running code, so the plan is not worked out again on every probe.
_migrated = threading.Event()


def _check_migrations() -> str:
    if _migrated.is_set():
        return OK
    try:
        executor = MigrationExecutor(connection)
        pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except Exception:
        logger.warning("readyz: migrations could not be read", exc_info=True)
        return "unreachable"
    if pending:
        logger.warning("readyz: %d migrations are not applied yet", len(pending))
        return "pending"
    _migrated.set()
    return OK


def _check_broker() -> str:
    from config.celery import app

    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_TIMEOUT_SECONDS)
    except Exception:
        logger.warning("readyz: broker unreachable", exc_info=True)
        return "unreachable"
    return OK


def _check_model() -> str:
    # Imported here: the registry pulls in torch, which a liveness probe must not wait for.
    from mlcore.registry import MODEL_DESCRIPTION, resolve_weights_path

    try:
        version = ModelVersion.objects.active()
    except Exception:
        logger.warning("readyz: model registry unreadable", exc_info=True)
        return "unreachable"
    if version is None:
        return "no active model"
    weights = resolve_weights_path(version)
    try:
        digest = file_sha256(weights)
    except OSError:
        logger.warning("readyz: weights file of the active model cannot be read")
        return "weights missing"
    if digest != version.weights_sha256:
        logger.error("readyz: weights file of the active model does not match its recorded sha256")
        return "weights hash mismatch"
    if not _operating_point_as_described(version, weights.parent / MODEL_DESCRIPTION):
        logger.error("readyz: the active model's threshold or calibration differs from its model.json")
        return "operating point differs from model.json"
    return OK


# Its own rounding aside, a registered version's operating point is its model.json's.
_OPERATING_POINT = (("threshold", 0.0), ("temperature", 1.0), ("logit_bias", 0.0))


def _operating_point_as_described(version: ModelVersion, description_path: Path) -> bool:
    """Whether the version's threshold and calibration are those of the model.json beside
    its weights (when that file describes these weights). A migration taken back and
    forward again left the calibration at its default: the shipped model missed 48
    pneumonias of the validation set instead of 20, and nothing said so (fresh-machine
    review)."""
    try:
        description = json.loads(description_path.read_text())
    except (OSError, ValueError):
        return True  # nothing to compare with
    if description.get("weights_sha256") != version.weights_sha256:
        return True
    return all(
        math.isclose(float(description.get(name, default)), float(getattr(version, name)), rel_tol=1e-9, abs_tol=1e-12)
        for name, default in _OPERATING_POINT
    )


def file_sha256(path: Path) -> str:
    """sha256 of a file, computed again only when its mtime or size changes."""
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1024 * 1024), b""):
            digest.update(chunk)
    with _hash_lock:
        # One entry per path: an updated file replaces its stale hash.
        for stale in [k for k in _hash_cache if k[0] == key[0]]:
            del _hash_cache[stale]
        _hash_cache[key] = hexdigest = digest.hexdigest()
    return hexdigest
