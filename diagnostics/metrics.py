"""Prometheus metrics of the study pipeline.

Web and worker processes write to the same metric files when PROMETHEUS_MULTIPROC_DIR is
set (Prometheus multiprocess mode; scripts/run-local.sh and the deployment set it), and
`/metrics` adds them up. Labels are small fixed sets: never a study id, never PHI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import prometheus_client
from django.db import Error as DatabaseError  # InterfaceError (a connection already closed) too
from django.db.models import Count, Min
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily

from diagnostics.models import Study

log = logging.getLogger(__name__)

# Failure reason codes (the `reason` label): the codes a failed study stores. The text
# shown to doctors lives on the study.
REASON_UNDECODABLE = Study.Failure.UNDECODABLE.value
REASON_MISSING_FILE = Study.Failure.MISSING_FILE.value
REASON_GAVE_UP = Study.Failure.GAVE_UP.value
REASON_INFERENCE_ERROR = Study.Failure.INFERENCE_ERROR.value
FAILURE_REASONS = (REASON_UNDECODABLE, REASON_MISSING_FILE, REASON_INFERENCE_ERROR, REASON_GAVE_UP)
# What put a batch back for a retry (the `reason` label of the retries): no study fails
# for these, so they are not failures; counted as such, a retry that then succeeded
# raised the failure rate the critical alert watches.
RETRY_REASONS = (
    "database", "broker", "storage", "model_unavailable", "out_of_memory", "time_limit", "unexpected_error",
)  # fmt: skip

STUDIES_RECEIVED = Counter("pleura_studies_received", "Studies stored and handed to the pipeline.", ["source"])
QUEUE_WAIT = Histogram(
    "pleura_queue_wait_seconds",
    "Time from a study being queued to a worker starting on it.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
)
INFERENCE_LATENCY = Histogram(
    "pleura_inference_latency_seconds",
    "Model time for one batch (forward pass and heatmaps).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "pleura_inference_batch_size", "Studies predicted together in one batch.", buckets=(1, 2, 4, 8, 16, 32, 64)
)
PREDICTIONS = Counter("pleura_predictions", "Predictions stored, by label and origin.", ["label", "origin"])
FAILURES = Counter("pleura_prediction_failures", "Studies failed by the pipeline, by reason code.", ["reason"])
RETRIES = Counter(
    "pleura_pipeline_retries", "Batches put back for a retry, by cause; no study fails for these.", ["reason"]
)
SWEPT = Counter(
    "pleura_pipeline_swept",
    "Studies the sweeper sent again, by what it found: processing (its worker lost or stalled) or queued "
    "(its message lost).",
    ["status"],
)
RETRIES_EXHAUSTED = Counter(
    "pleura_pipeline_retries_exhausted",
    "Messages that used up their retries, by the last cause: their studies wait for the sweeper.",
    ["reason"],
)


class QueueDepthCollector:
    """Studies waiting or in progress, and how long ago the oldest of them was queued,
    read from the database at scrape time (one query).

    The age is the signal of a stalled pipeline that no process reports itself: with
    Redis down, uploads are stored and nothing moves (neither workers nor the sweeper),
    yet every process is up and no study fails.
    """

    def __init__(self, clock=timezone.now):
        self.clock = clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("pleura_queue_depth", "Studies queued or processing right now.", labels=["status"])
        oldest = GaugeMetricFamily(
            "pleura_queue_oldest_age_seconds",
            "Seconds since the oldest study queued or processing was queued (0 when there is none).",
            labels=["status"],
        )
        statuses = (Study.Status.QUEUED.value, Study.Status.PROCESSING.value)
        database_up = GaugeMetricFamily(
            "pleura_database_up", "1 when this process's query of the queue reached the database, else 0."
        )
        try:
            rows = {
                row["status"]: row
                for row in Study.objects.filter(status__in=statuses)
                .values("status")
                # Since it was queued: a failed study analysed again, days after its upload,
                # read as days in the queue and fired the stall alert (pipeline review).
                .annotate(n=Count("id"), since=Min(Coalesce("queued_at", "created_at")))
                .order_by()
            }
        except DatabaseError:
            # Said as a figure of its own, with the process's other metrics: raised, /metrics
            # answered 503, the target read as down and PleuraWebDown blamed the web (ops review).
            log.warning("metrics: the queue could not be read from the database", exc_info=True)
            database_up.add_metric([], 0)
            yield database_up
            return
        database_up.add_metric([], 1)
        yield database_up
        now = self.clock()
        for status in statuses:
            row = rows.get(status, {"n": 0, "since": None})
            depth.add_metric([status], row["n"])
            oldest.add_metric([status], max(0.0, (now - row["since"]).total_seconds()) if row["since"] else 0.0)
        yield depth
        yield oldest


def record_failure(reason: str) -> None:
    FAILURES.labels(reason=reason if reason in FAILURE_REASONS else REASON_INFERENCE_ERROR).inc()


def record_retry(reason: str, *, exhausted: bool = False) -> None:
    """A batch put back for a retry; or, `exhausted`, one whose message had no retry left,
    counted apart: counted as a retry, it made the retries one more than Celery's
    (pipeline review)."""
    counter = RETRIES_EXHAUSTED if exhausted else RETRIES
    counter.labels(reason=reason if reason in RETRY_REASONS else "database").inc()


def metrics_view(request: HttpRequest) -> HttpResponse:
    """`/metrics`: every process's metrics in multiprocess mode, plus the queue depth."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = prometheus_client.REGISTRY
    depth = CollectorRegistry()
    depth.register(QueueDepthCollector())
    body = prometheus_client.generate_latest(registry) + prometheus_client.generate_latest(depth)
    return HttpResponse(body, content_type=prometheus_client.CONTENT_TYPE_LATEST)
