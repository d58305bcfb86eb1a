"""The queue gauges /metrics reads from the database at scrape time: how many studies are
queued or processing, and how long ago the oldest of each was queued."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest

from diagnostics.metrics import QueueDepthCollector
from diagnostics.models import Study
from tests.pipeline.conftest import NORMAL_IMAGE, PNEUMONIA_IMAGE, store_study

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def scrape() -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(QueueDepthCollector(clock=lambda: NOW))
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_an_empty_queue_reports_no_study_and_no_age(db):
    assert scrape() == {
        "pleura_database_up": 1.0,
        'pleura_queue_depth{status="queued"}': 0.0,
        'pleura_queue_depth{status="processing"}': 0.0,
        'pleura_queue_oldest_age_seconds{status="queued"}': 0.0,
        'pleura_queue_oldest_age_seconds{status="processing"}': 0.0,
    }


def test_the_oldest_unfinished_study_of_each_status_gives_the_age_and_finished_ones_count_for_nothing(hospital_a):
    queued_minutes_ago = {"queued": [20, 3], "processing": [7], "completed": [90], "failed": [60]}
    for status, ages in queued_minutes_ago.items():
        for minutes in ages:
            study = store_study(hospital_a, NORMAL_IMAGE if minutes % 2 else PNEUMONIA_IMAGE)
            at = NOW - timedelta(minutes=minutes)
            Study.objects.filter(pk=study.pk).update(status=status, created_at=at, queued_at=at)

    assert scrape() == {
        "pleura_database_up": 1.0,
        'pleura_queue_depth{status="queued"}': 2.0,
        'pleura_queue_depth{status="processing"}': 1.0,
        'pleura_queue_oldest_age_seconds{status="queued"}': 1200.0,
        'pleura_queue_oldest_age_seconds{status="processing"}': 420.0,
    }


def test_a_study_queued_again_long_after_its_upload_is_as_old_as_its_wait(hospital_a):
    """A failed study analysed again days after its upload read as days in the queue, and
    the stall alert fired (pipeline review)."""
    study = store_study(hospital_a, NORMAL_IMAGE)
    Study.objects.filter(pk=study.pk).update(created_at=NOW - timedelta(days=2), queued_at=NOW - timedelta(seconds=30))

    assert scrape()['pleura_queue_oldest_age_seconds{status="queued"}'] == 30.0


@pytest.mark.parametrize("lost", ["OperationalError", "InterfaceError"])
def test_a_database_that_cannot_be_reached_is_a_figure_not_a_failed_scrape(client, db, monkeypatch, lost):
    """/metrics answered 503: the web target read as down, PleuraWebDown blamed the web and
    the request figures vanished from the dashboard during the outage (ops review). A
    connection already closed is an InterfaceError, outside DatabaseError (diff review)."""
    from django import db as django_db

    def unreachable(*args, **kwargs):
        raise getattr(django_db, lost)("connection to server at 127.0.0.1 failed")

    monkeypatch.setattr(Study.objects, "filter", unreachable)

    assert scrape() == {"pleura_database_up": 0.0}
    response = client.get("/metrics")
    assert response.status_code == 200
    assert b"pleura_database_up 0.0" in response.content


def _counted(name: str) -> dict[str, float]:
    from prometheus_client import REGISTRY

    return {
        sample.labels["reason"]: sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == name
    }


def test_a_batch_retried_is_counted_as_a_retry_and_no_study_as_failed(hospital_a, monkeypatch):
    """Retries were counted as failures ('transient', 'model_unavailable' twice for one
    batch), which the critical failure-rate alert adds up as failed studies."""
    from diagnostics import pipeline, tasks

    study = store_study(hospital_a, NORMAL_IMAGE)  # and no model is active: every try is put back
    monkeypatch.setattr(pipeline, "retry_delay", lambda retries: 0)
    failures_before = _counted("pleura_prediction_failures_total")
    retries_before = _counted("pleura_pipeline_retries_total")
    exhausted_before = _counted("pleura_pipeline_retries_exhausted_total")

    tasks.predict_studies.apply(args=[[study.pk]])

    assert _counted("pleura_prediction_failures_total") == failures_before
    retries = _counted("pleura_pipeline_retries_total")
    # Celery retried MAX_RETRIES times; the last try, with none left, is not one (pipeline review).
    assert retries["model_unavailable"] - retries_before.get("model_unavailable", 0) == pipeline.MAX_RETRIES
    exhausted = _counted("pleura_pipeline_retries_exhausted_total")
    assert exhausted["model_unavailable"] - exhausted_before.get("model_unavailable", 0) == 1
    study.refresh_from_db()
    assert (study.status, study.attempts) == ("queued", 0)


def test_a_study_put_back_and_claimed_again_is_one_queue_wait(hospital_a, tiny_model, monkeypatch):
    """Observed at every claim, a study put back (here: its batch out of memory once) was
    counted once per claim."""
    import torch
    from prometheus_client import REGISTRY

    from diagnostics import pipeline
    from mlcore import registry

    study = store_study(hospital_a, NORMAL_IMAGE)
    engine = registry.get_engine(tiny_model)
    real_predict, calls = engine.predict, []

    def out_of_memory_once(grays, **kwargs):
        calls.append(len(grays))
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real_predict(grays, **kwargs)

    monkeypatch.setattr(engine, "predict", out_of_memory_once)

    def waits() -> float:
        return REGISTRY.get_sample_value("pleura_queue_wait_seconds_count") or 0.0

    before = waits()
    with pytest.raises(pipeline.TransientPipelineError):
        pipeline.predict_studies([study.pk])
    assert pipeline.predict_studies([study.pk]) == [study.pk]

    assert waits() - before == 1


def test_a_study_the_sweeper_puts_back_keeps_its_age_in_the_queue(hospital_a, settings):
    """Re-queued with a new queueing time, a study whose worker died on every claim never
    reached the stall alert's 15 minutes while it went unanalysed (diff review)."""
    from diagnostics import pipeline

    settings.PIPELINE_STUCK_SECONDS = 300
    study = store_study(hospital_a, NORMAL_IMAGE)
    now = timezone.now()
    Study.objects.filter(pk=study.pk).update(
        status="processing", queued_at=now - timedelta(minutes=20), started_at=now - timedelta(minutes=7)
    )
    collector = QueueDepthCollector(clock=lambda: now)

    assert pipeline.sweep_stuck_studies(now=now).requeued == [study.pk]

    registry = CollectorRegistry()
    registry.register(collector)
    ages = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in generate_latest(registry).decode().splitlines()
        if line.startswith("pleura_queue_oldest_age_seconds")
    }
    assert ages['pleura_queue_oldest_age_seconds{status="queued"}'] == 1200.0
