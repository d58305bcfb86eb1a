"""Fixtures for the pipeline: tiny real models, real studies, a real broker and a real
Celery worker process that shares the test database and media folder."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
import torch
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import connection
from django.utils import timezone

from config.celery import app as celery_app
from diagnostics import imaging
from diagnostics.models import Study
from mlcore import registry
from mlcore.engine import pick_device
from mlcore.models import ModelVersion
from mlcore.network import build_network, save_weights
from tests.conftest import REPO_ROOT, SHARED_DATA, missing, require_service

TRAIN = SHARED_DATA / "chest_xray" / "train"
NORMAL_IMAGE = TRAIN / "NORMAL" / "IM-0115-0001.jpeg"
PNEUMONIA_IMAGE = TRAIN / "PNEUMONIA" / "person1000_bacteria_2931.jpeg"
OTHER_IMAGES = [TRAIN / "NORMAL" / "IM-0117-0001.jpeg", TRAIN / "NORMAL" / "IM-0119-0001.jpeg"]
# Where predictions run on this machine: a GPU machine's suite sees "cuda" recorded.
INFERENCE_DEVICE = str(pick_device())


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- Models and studies -------------------------------------------------------------


def make_model_version(
    folder: Path, *, name: str, seed: int, image_size: int = 64, head_bias: float | None = None, **fields
) -> ModelVersion:
    """A randomly initialised network of the real architecture: right for pipeline mechanics.
    `head_bias` sets the last layer's bias (NaN: a network that gives no number)."""
    torch.manual_seed(seed)
    path = folder / f"{name}.pt"
    network = build_network("resnet18")
    if head_bias is not None:
        with torch.no_grad():
            network.fc.bias.fill_(head_bias)
    sha256 = save_weights(network, path)
    fields.setdefault("status", ModelVersion.Status.ACTIVE)
    return ModelVersion.objects.create(
        name=name,
        architecture="resnet18",
        image_size=image_size,
        weights_path=str(path),
        weights_sha256=sha256,
        threshold=0.5,
        **fields,
    )


@pytest.fixture
def tiny_model(db, tmp_path) -> ModelVersion:
    registry.engines.clear()
    yield make_model_version(tmp_path, name="tiny-test", seed=0)
    registry.engines.clear()


def store_study(hospital, image: Path, *, source: str = Study.Source.API, patient_id: str = "MRN-4242") -> Study:
    """A stored, queued study made from a real radiograph, as the ingestion service leaves it."""
    data = image.read_bytes()
    decoded = imaging.decode_upload(data)
    gray = decoded.gray
    study = Study(
        hospital=hospital,
        patient_id=patient_id,
        patient_name="Doe^Jane",
        source=source,
        original_format=Study.Format.JPEG,
        original_sha256=hashlib.sha256(data).hexdigest(),
        original_size=len(data),
        rows=gray.shape[0],
        columns=gray.shape[1],
        pixel_sha256=decoded.pixel_sha256,
        queued_at=timezone.now(),
    )
    study.original_file.save("original.jpg", ContentFile(data), save=False)
    study.save()
    return study


# --- Broker ---------------------------------------------------------------------------


@dataclass
class Broker:
    url: str
    options: dict
    env: dict = field(default_factory=dict)

    def purge(self) -> None:
        """Drop every waiting or unacknowledged message (e.g. one restored by a worker an
        earlier test stopped), so a test sees only its own."""
        if self.url.startswith("filesystem://"):
            for message in Path(self.options["data_folder_in"]).glob("*"):
                message.unlink(missing_ok=True)
            return
        import redis

        redis.Redis.from_url(self.url).delete(
            "inference", "celery", "training", "unacked", "unacked_index", "unacked_mutex"
        )


@pytest.fixture(autouse=True)
def _no_wake_up_waiting():
    """No wake-up message is recorded as waiting: an earlier test's (or one whose message
    `Broker.purge` drops at the start of a worker test) would keep uploads from sending."""
    from django.core.cache import cache

    from diagnostics.pipeline import wake_ups

    cache.delete(wake_ups.key)


def point_publisher_at(url: str, options: dict) -> None:
    """Make this process's Celery app publish to `url` (its connection pools are rebuilt)."""
    # Pools are shared per broker URL by kombu: drop our references, never close them.
    celery_app._pool = None
    celery_app.amqp._producer_pool = None
    celery_app.conf.broker_url = url
    celery_app.conf.broker_transport_options = options


def filesystem_broker(folder: Path) -> Broker:
    options = {
        "data_folder_in": str(folder / "out"),
        "data_folder_out": str(folder / "out"),
        "processed_folder": str(folder / "processed"),
        "control_folder": str(folder / "control"),
        "store_processed": False,
    }
    for key in ("data_folder_in", "processed_folder", "control_folder"):
        Path(options[key]).mkdir(parents=True, exist_ok=True)
    return Broker("filesystem://", options, {"CELERY_BROKER_URL": "filesystem://", "BROKER_DIR": str(folder)})


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Broker:
    """Redis when REDIS_URL is set (always in CI), else a private filesystem broker."""
    redis_url = os.environ.get("REDIS_URL")
    if redis_url:
        url = require_service(redis_url, "Redis")
        chosen = Broker(url, {"visibility_timeout": 600}, {"CELERY_BROKER_URL": url, "REDIS_URL": url})
    else:
        if os.environ.get("CI", "").lower() == "true":
            missing("REDIS_URL: CI runs the workers on Redis, as production does")
        chosen = filesystem_broker(tmp_path_factory.mktemp("broker"))
    previous = (celery_app.conf.broker_url, dict(celery_app.conf.broker_transport_options or {}))
    point_publisher_at(chosen.url, chosen.options)
    yield chosen
    point_publisher_at(*previous)


# --- Worker process -------------------------------------------------------------------


def database_url() -> str:
    """The URL of the test database pytest-django created (the worker must use it)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        assert not connection.is_in_memory_db(), "the worker needs a file database"
        return f"sqlite:///{db['NAME']}"
    user = quote(db.get("USER") or "")
    password = f":{quote(db['PASSWORD'])}" if db.get("PASSWORD") else ""
    return f"postgres://{user}{password}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


class Worker:
    """`celery -A config worker` in its own process group, logging to a file."""

    def __init__(
        self, broker: Broker, log_path: Path, concurrency: int = 1, queues: str = "celery,inference", **env: str
    ):
        self.log_path = log_path
        self.concurrency = concurrency
        self.queues = queues
        self.env = {
            **os.environ,
            **broker.env,
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": database_url(),
            "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "LOG_LEVEL": "INFO",
            **env,
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> Worker:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", self.queues]
        command += ["--concurrency", str(self.concurrency), "--pool", "prefork", "--loglevel", "INFO"]
        command += ["-n", f"test-{uuid.uuid4().hex[:8]}@%h"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_for(lambda: " ready." in self.log(offset) or self.process.poll() is not None, timeout, what="worker ready")
        assert self.process.poll() is None, f"worker exited:\n{self.log(offset)}"
        return self

    def log(self, offset: int = 0) -> str:
        return self.log_path.read_bytes()[offset:].decode(errors="replace") if self.log_path.exists() else ""

    def pool_pids(self) -> list[int]:
        # Children are listed per thread of the parent: a pool process that replaces a
        # dead one is forked by the pool's supervisor thread, not the main thread.
        pids = []
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            try:
                pids += [int(pid) for pid in children.read_text().split()]
            except OSError:  # the thread ended meanwhile
                continue
        return sorted(pids)

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool): nothing gets to clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(3)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def start_worker(broker, tmp_path):
    """Start real workers for this test; all are stopped at the end."""
    workers: list[Worker] = []

    broker.purge()

    def start(concurrency: int = 1, queues: str = "celery,inference", **env: str) -> Worker:
        worker = Worker(broker, tmp_path / "worker.log", concurrency, queues, **env).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    if workers:
        # pytest shows this only when the test failed.
        print(workers[0].log())
