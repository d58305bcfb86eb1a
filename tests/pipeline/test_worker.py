"""The pipeline through a real `celery worker` process and the real broker (Redis when
REDIS_URL is set, as in CI; else the filesystem broker), sharing the test database."""

from __future__ import annotations

import os
import sqlite3
import time

import psycopg
import pytest
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from config.celery import app as celery_app
from diagnostics import pipeline, tasks
from diagnostics.models import Prediction, Study
from hospital.models import AuditEvent
from tests.conftest import missing
from tests.pipeline.conftest import (
    INFERENCE_DEVICE,
    NORMAL_IMAGE,
    OTHER_IMAGES,
    PNEUMONIA_IMAGE,
    TRAIN,
    database_url,
    point_publisher_at,
    store_study,
    wait_for,
)

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

COMPLETED, FAILED, PROCESSING, QUEUED = "completed", "failed", "processing", "queued"
# The sweeper of these workers treats anything older than a second as stuck.
FAST_SWEEP = {"PIPELINE_STUCK_SECONDS": "1"}


def status_of(study: Study) -> str:
    return Study.objects.values_list("status", flat=True).get(pk=study.pk)


def settled(study: Study) -> bool:
    return status_of(study) in (COMPLETED, FAILED)


def upload(hospital, image, **kwargs) -> Study:
    """Store a study and hand it over exactly as the ingestion service does."""
    study = store_study(hospital, image, **kwargs)
    tasks.enqueue_prediction(study.pk)
    return study


def test_stored_study_is_predicted_by_the_worker_and_a_redelivery_changes_nothing(hospital_a, tiny_model, start_worker):
    start_worker()
    study = upload(hospital_a, PNEUMONIA_IMAGE)

    wait_for(lambda: settled(study), 60, what="prediction")

    study.refresh_from_db()
    assert (study.status, study.failure_reason) == (COMPLETED, "")
    prediction = Prediction.objects.get(study=study)
    assert prediction.model_version == tiny_model
    assert prediction.label == ("pneumonia" if prediction.probability >= prediction.threshold else "normal")
    assert (prediction.device, prediction.batch_size, prediction.is_shadow) == (INFERENCE_DEVICE, 1, False)
    assert prediction.heatmap.storage.exists(prediction.heatmap.name)
    # The same message again (a broker redelivering it), then a fresh study behind it.
    pipeline.publish([study.pk])
    later = upload(hospital_a, NORMAL_IMAGE)
    wait_for(lambda: settled(later), 60, what="the study queued behind the redelivery")
    assert Prediction.objects.filter(study=study).count() == 1
    assert Study.objects.get(pk=study.pk).completed_at == study.completed_at
    assert AuditEvent.objects.filter(action="prediction.made", target_id=str(study.code)).count() == 1


def test_identical_pixels_reuse_the_earlier_prediction_through_the_worker(hospital_a, tiny_model, start_worker):
    start_worker()
    first = upload(hospital_a, NORMAL_IMAGE)
    wait_for(lambda: settled(first), 60, what="first prediction")
    second = upload(hospital_a, NORMAL_IMAGE, patient_id="MRN-0002")
    wait_for(lambda: settled(second), 60, what="second prediction")

    original = Prediction.objects.get(study=first)
    reused = Prediction.objects.get(study=second)
    assert reused.reused_from == original
    assert (reused.probability, reused.label) == (original.probability, original.label)


def test_undecodable_pixels_mark_the_study_failed_without_retrying(hospital_a, tiny_model, start_worker):
    worker = start_worker()
    study = store_study(hospital_a, NORMAL_IMAGE)
    with open(study.original_file.path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n truncated")
    tasks.enqueue_prediction(study.pk)

    wait_for(lambda: settled(study), 60, what="failure")

    study.refresh_from_db()
    assert (study.status, study.failure_code, study.failure_reason) == (
        FAILED,
        "undecodable",
        pipeline.UNDECODABLE_MESSAGE,
    )
    assert Prediction.objects.filter(study=study).count() == 0
    assert "Retry in" not in worker.log()


def test_transient_database_error_is_retried_with_backoff(hospital_a, tiny_model, start_worker):
    # The worker waits at most 1 s for a lock, then gets an OperationalError.
    if connection.vendor == "sqlite":
        worker = start_worker(DATABASE_URL=f"{database_url()}?timeout=1")
    else:
        worker = start_worker(DATABASE_URL=f"{database_url()}?options=-c%20lock_timeout%3D1000")
    study = store_study(hospital_a, PNEUMONIA_IMAGE)

    with _database_locked():
        pipeline.publish([study.pk])
        wait_for(lambda: "Retry in" in worker.log(), 30, what="a retry")
        time.sleep(1)
    wait_for(lambda: settled(study), 60, what="prediction after the lock is released")

    assert status_of(study) == COMPLETED
    assert Prediction.objects.filter(study=study).count() == 1
    assert "OperationalError" in worker.log()


class _database_locked:
    """Another client holds an exclusive lock on the studies (SQLite: the whole file)."""

    def __enter__(self):
        settings = connection.settings_dict
        if connection.vendor == "sqlite":
            self.conn = sqlite3.connect(settings["NAME"], isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")
        else:
            self.conn = psycopg.connect(database_url())
            self.conn.execute("LOCK TABLE diagnostics_study IN ACCESS EXCLUSIVE MODE")
        return self

    def __exit__(self, *exc):
        self.conn.rollback()
        self.conn.close()


def test_an_emr_upload_succeeds_with_redis_down_and_the_sweeper_queues_it_later(
    hospital_a, key_a, tiny_model, start_worker, broker
):
    # Redis down, as production has it: the broker, and the cache behind the wake-up
    # record and the API's rate limit.
    dead_redis = "redis://127.0.0.1:9/0"  # nothing listens on port 9
    dead_cache = {"default": {"BACKEND": "config.cache.SharedClientRedisCache", "LOCATION": dead_redis}}
    emr = APIClient()
    emr.credentials(HTTP_AUTHORIZATION=f"Bearer {key_a[1]}")
    point_publisher_at(dead_redis, {})
    try:
        with override_settings(CACHES=dead_cache), NORMAL_IMAGE.open("rb") as image:
            # It answers at all: publishing gives up after CELERY_BROKER_CONNECTION_TIMEOUT.
            response = emr.post("/api/v1/studies/", {"file": image}, format="multipart")
    finally:
        point_publisher_at(broker.url, broker.options)
    assert response.status_code == 202
    study = Study.objects.get(code=response.json()["id"])
    assert status_of(study) == QUEUED

    start_worker(**FAST_SWEEP)
    time.sleep(1.2)
    celery_app.send_task("diagnostics.sweep_stuck_studies")
    wait_for(lambda: settled(study), 60, what="the sweeper's re-queue")

    study.refresh_from_db()
    # Its message was sent late, not tried and lost: no attempt spent.
    assert (study.status, study.attempts) == (COMPLETED, 0)
    assert study.resent_at is not None


def _active_model_of_size(folder, name: str, image_size: int):
    from mlcore import registry
    from tests.pipeline.conftest import make_model_version

    registry.engines.clear()
    return make_model_version(folder, name=name, seed=3, image_size=image_size)


@pytest.fixture
def slow_model(db, tmp_path):
    """A large input size, so a batch takes seconds on CPU: time to kill a worker in it."""
    return _active_model_of_size(tmp_path, "slow-test", 640)


def _upload_batch(hospital, count: int) -> list[Study]:
    images = sorted((TRAIN / "PNEUMONIA").glob("person1*_bacteria_*.jpeg"))[:count]
    return [store_study(hospital, image) for image in images]


def test_pool_process_killed_mid_prediction_the_message_is_redelivered_and_completes(
    hospital_a, slow_model, start_worker
):
    worker = start_worker()
    studies = _upload_batch(hospital_a, 6)
    pipeline.publish([studies[0].pk])
    wait_for(lambda: all(status_of(s) == PROCESSING for s in studies), 30, interval=0.02, what="all claimed")
    [victim] = worker.pool_pids()

    import os
    import signal

    os.kill(victim, signal.SIGKILL)
    assert [status_of(s) for s in studies] == [PROCESSING] * 6  # it died holding all six

    wait_for(lambda: all(settled(s) for s in studies), 120, what="completion after the redelivery")
    assert [status_of(s) for s in studies] == [COMPLETED] * 6
    assert Prediction.objects.filter(study__in=studies).count() == 6
    assert victim not in worker.pool_pids()
    assert "signal 9" in worker.log()


@pytest.fixture
def slower_model(db, tmp_path):
    """Larger still: one image takes long enough for the test to see it predicted alone."""
    return _active_model_of_size(tmp_path, "slower-test", 1024)


def test_a_study_that_kills_every_worker_holding_it_is_given_up_and_the_others_complete(
    hospital_a, slower_model, start_worker
):
    # Each restart is allowed once; the second time it is taken over, it fails. One torch
    # thread, so the other core is this test's.
    worker = start_worker(PIPELINE_MAX_ATTEMPTS="1", INFERENCE_THREADS="1")
    studies = _upload_batch(hospital_a, 4)
    poison, others = studies[0], studies[1:]
    pipeline.publish([poison.pk])
    wait_for(lambda: all(status_of(s) == PROCESSING for s in studies), 30, interval=0.02, what="all claimed")

    # As a decoder that crashes on its file would, this test kills the pool process that
    # holds the poison: first in its batch of four, then whenever it is predicted alone.
    import os
    import signal

    kills, claims_killed = [], set()

    def kill_whoever_predicts_the_poison() -> bool:
        rows = {
            pk: (status, started_at, attempts)
            for pk, status, started_at, attempts in Study.objects.filter(pk__in=[s.pk for s in studies]).values_list(
                "pk", "status", "started_at", "attempts"
            )
        }
        statuses = [rows[s.pk][0] for s in studies]
        claimed_at = rows[poison.pk][1]  # a claim of the poison is known by its start time: one kill each
        alone = statuses[0] == PROCESSING and PROCESSING not in statuses[1:]
        # A claim past the bound gives the poison up without decoding it: a crashing decoder
        # never runs there. Once the others had messages of their own when put back
        # (9b13432), they were done by then, the claim found the poison alone, and this
        # test killed the process giving it up, again and again.
        decoded = rows[poison.pk][2] <= 1
        if (
            claimed_at not in claims_killed
            and decoded
            and ((not kills and statuses == [PROCESSING] * 4) or (kills and alone))
        ):
            claims_killed.add(claimed_at)
            for pid in worker.pool_pids():
                os.kill(pid, signal.SIGKILL)
                kills.append(pid)
            wait_for(lambda: not set(kills) & set(worker.pool_pids()), 10, interval=0.02, what="the pool process gone")
        return all(status in (COMPLETED, FAILED) for status in statuses)

    wait_for(kill_whoever_predicts_the_poison, 240, interval=0.005, what="the poison given up and the rest completed")

    assert len(kills) == 2
    poison.refresh_from_db()
    assert (poison.status, poison.attempts) == (FAILED, 2)
    assert poison.failure_reason == pipeline.GAVE_UP_MESSAGE.format(attempts=2)
    assert [status_of(s) for s in others] == [COMPLETED] * 3
    # Taken over once when the batch died, then predicted each on its own.
    assert sorted(Study.objects.filter(pk__in=[s.pk for s in others]).values_list("attempts", flat=True)) == [1] * 3
    assert list(Prediction.objects.filter(study__in=others).values_list("batch_size", flat=True)) == [1] * 3


def test_studies_put_back_beside_a_restarted_one_that_hangs_are_taken_by_an_idle_process(
    hospital_a, tiny_model, start_worker
):
    """A restarted study is predicted alone, and the others claimed with it go back to the
    queue. They waited for the drain to take them after it: as long as the restarted
    study's read hung (a stalled mount), four soft time limits, with a pool process idle
    beside it (pipeline review)."""
    worker = start_worker(concurrency=2, CELERY_TASK_SOFT_TIME_LIMIT="60", CELERY_TASK_TIME_LIMIT="90")
    hung, *others = _upload_batch(hospital_a, 3)
    Study.objects.filter(pk=hung.pk).update(attempts=1)  # cut short once before
    os.remove(hung.original_file.path)
    os.mkfifo(hung.original_file.path)  # opened for reading, it waits for a writer that never comes

    pipeline.publish([hung.pk, *(study.pk for study in others)])

    wait_for(lambda: all(settled(study) for study in others), 45, what="the others, by the idle process")
    assert [status_of(study) for study in others] == [COMPLETED, COMPLETED]
    assert status_of(hung) == PROCESSING  # still hanging: nobody waited for it
    assert len(worker.pool_pids()) == 2


def test_whole_worker_killed_mid_prediction_a_new_worker_and_the_sweeper_complete_it(
    hospital_a, slow_model, start_worker
):
    first = start_worker()
    studies = _upload_batch(hospital_a, 6)
    pipeline.publish([studies[0].pk])
    wait_for(lambda: all(status_of(s) == PROCESSING for s in studies), 30, interval=0.02, what="all claimed")

    first.kill()
    assert [status_of(s) for s in studies] == [PROCESSING] * 6

    start_worker(**FAST_SWEEP)
    time.sleep(1.2)
    celery_app.send_task("diagnostics.sweep_stuck_studies")
    wait_for(lambda: all(settled(s) for s in studies), 120, what="completion after the sweep")
    assert [status_of(s) for s in studies] == [COMPLETED] * 6
    assert Prediction.objects.filter(study__in=studies).count() == 6
    assert sorted(Study.objects.filter(pk__in=[s.pk for s in studies]).values_list("attempts", flat=True)) == [1] * 6


def test_waiting_studies_are_predicted_in_one_batch(hospital_a, tiny_model, start_worker):
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]]
    for study in studies:
        pipeline.publish([study.pk])
    start_worker()  # finds four messages waiting: the first drains the other three

    wait_for(lambda: all(settled(s) for s in studies), 60, what="the batch")
    assert list(Prediction.objects.values_list("batch_size", flat=True)) == [4, 4, 4, 4]


def test_uploads_while_a_wake_up_waits_send_no_message_and_the_worker_predicts_them_all(
    hospital_a, tiny_model, start_worker, broker, settings
):
    if not broker.url.startswith("redis://"):
        missing("one waiting message needs the cache that web and workers share: Redis (REDIS_URL)")
    import redis

    settings.PIPELINE_COALESCE_WAKE_UPS = True  # the worker has it from REDIS_URL
    queue = redis.Redis.from_url(broker.url)
    studies = [upload(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]]
    assert queue.llen("inference") == 1

    start_worker()

    wait_for(lambda: all(settled(s) for s in studies), 60, what="the batch")
    assert [status_of(s) for s in studies] == [COMPLETED] * 4
    assert list(Prediction.objects.values_list("batch_size", flat=True)) == [4, 4, 4, 4]
    # The worker took the waiting message: the next upload sends one of its own.
    later = upload(hospital_a, sorted((TRAIN / "PNEUMONIA").glob("*.jpeg"))[0])
    wait_for(lambda: settled(later), 60, what="the study uploaded after the wake-up was taken")
    assert status_of(later) == COMPLETED


def test_a_pool_process_grown_past_its_memory_bound_is_replaced_and_the_next_study_completes(
    hospital_a, tiny_model, start_worker
):
    # A bound of 1 MiB: every pool process has outgrown it after its first task.
    worker = start_worker(CELERY_WORKER_MAX_MEMORY_PER_CHILD_MIB="1")
    [first_process] = worker.pool_pids()
    study = upload(hospital_a, PNEUMONIA_IMAGE)
    wait_for(lambda: settled(study), 60, what="prediction")
    wait_for(lambda: worker.pool_pids() and first_process not in worker.pool_pids(), 30, what="the process replaced")

    later = upload(hospital_a, NORMAL_IMAGE)
    wait_for(lambda: settled(later), 90, what="the study after the replacement")
    assert [status_of(study), status_of(later)] == [COMPLETED, COMPLETED]
    assert f"pool process {first_process} replaced: its peak resident memory" in worker.log()


def test_each_pool_process_takes_an_equal_share_of_the_cores(hospital_a, tiny_model, start_worker):
    # Torch's default is a thread per core in every process: two pool processes would run
    # twice as many busy threads as cores.
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    worker = start_worker(concurrency=2)

    ready = f"inference worker ready: model {tiny_model.name} on {INFERENCE_DEVICE}, {share} CPU threads"
    wait_for(lambda: worker.log().count(ready) == 2, 60, what="both pool processes")
    study = upload(hospital_a, PNEUMONIA_IMAGE)
    wait_for(lambda: settled(study), 60, what="prediction")
    assert status_of(study) == COMPLETED


def test_inference_threads_setting_overrides_the_share(settings):
    settings.INFERENCE_THREADS = 0
    cores = len(os.sched_getaffinity(0))
    assert [pipeline.cpu_threads_per_process(n) for n in (1, cores, 4 * cores)] == [cores, 1, 1]

    settings.INFERENCE_THREADS = 3
    assert pipeline.cpu_threads_per_process(1) == 3
    assert pipeline.cpu_threads_per_process(4 * cores) == 3
