"""The queue gauges /metrics reads from the database at scrape time: how many studies are
queued or processing, and how long ago the oldest of each was uploaded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
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
        'pleura_queue_depth{status="queued"}': 0.0,
        'pleura_queue_depth{status="processing"}': 0.0,
        'pleura_queue_oldest_age_seconds{status="queued"}': 0.0,
        'pleura_queue_oldest_age_seconds{status="processing"}': 0.0,
    }


def test_the_oldest_unfinished_study_of_each_status_gives_the_age_and_finished_ones_count_for_nothing(hospital_a):
    uploaded_minutes_ago = {"queued": [20, 3], "processing": [7], "completed": [90], "failed": [60]}
    for status, ages in uploaded_minutes_ago.items():
        for minutes in ages:
            study = store_study(hospital_a, NORMAL_IMAGE if minutes % 2 else PNEUMONIA_IMAGE)
            Study.objects.filter(pk=study.pk).update(status=status, created_at=NOW - timedelta(minutes=minutes))

    assert scrape() == {
        'pleura_queue_depth{status="queued"}': 2.0,
        'pleura_queue_depth{status="processing"}': 1.0,
        'pleura_queue_oldest_age_seconds{status="queued"}': 1200.0,
        'pleura_queue_oldest_age_seconds{status="processing"}': 420.0,
    }
