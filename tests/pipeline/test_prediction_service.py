"""The pipeline's logic, called directly (no broker): claims, batching, reuse, failures, sweeper."""

from __future__ import annotations

import errno
import pickle
import re
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.cache import cache
from django.db import OperationalError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from PIL import Image

from diagnostics import media, pipeline, services
from diagnostics.models import Prediction, Study
from hospital.models import AuditEvent
from mlcore import registry
from mlcore.engine import InferenceEngine
from mlcore.models import ModelVersion
from tests.conftest import (
    SHARED_DATA,
    files_limited_to,
    needs_postgresql,
    storage_refuses,
    stored_files,
    unreachable_media_root,
)
from tests.pipeline.conftest import (
    INFERENCE_DEVICE,
    NORMAL_IMAGE,
    OTHER_IMAGES,
    PNEUMONIA_IMAGE,
    TRAIN,
    make_model_version,
    store_study,
)

pytestmark = pytest.mark.django_db

QUEUED, PROCESSING, COMPLETED, FAILED = (s.value for s in Study.Status)


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch):
    # Publishing is the broker's business, tested with a real worker elsewhere; here the
    # re-queue path is observed through what it would publish.
    published: list[list[int]] = []
    monkeypatch.setattr(pipeline, "publish", lambda ids: published.append(list(ids)) or True)
    return published


def test_queued_study_is_predicted_stored_and_audited(hospital_a, tiny_model):
    study = store_study(hospital_a, PNEUMONIA_IMAGE)

    assert pipeline.predict_studies([study.pk]) == [study.pk]

    study.refresh_from_db()
    assert study.status == COMPLETED
    assert study.claimed_by == ""
    assert study.started_at is not None and study.completed_at >= study.started_at
    prediction = Prediction.objects.get(study=study)
    assert prediction.model_version == tiny_model
    assert 0.0 <= prediction.probability <= 1.0
    assert prediction.label == ("pneumonia" if prediction.probability >= 0.5 else "normal")
    assert prediction.threshold == 0.5
    assert prediction.device == INFERENCE_DEVICE
    assert prediction.batch_size == 1
    assert prediction.latency_ms > 0
    assert prediction.is_shadow is False
    assert prediction.reused_from is None
    with prediction.heatmap.open("rb") as handle:
        heatmap = Image.open(handle)
        assert (heatmap.mode, "transparency" in heatmap.info) == ("P", True)
        assert heatmap.size == (study.columns, study.rows)
    event = AuditEvent.objects.get(action="prediction.made")
    assert event.hospital == hospital_a
    assert event.target_id == str(study.code)
    assert event.detail == {
        "label": prediction.label,
        "probability": round(prediction.probability, 4),
        "model_version": "tiny-test",
        "reused": False,
    }


def test_second_delivery_of_a_completed_study_does_nothing(hospital_a, tiny_model):
    study = store_study(hospital_a, NORMAL_IMAGE)
    pipeline.predict_studies([study.pk], claim="message-1")
    study.refresh_from_db()

    assert pipeline.predict_studies([study.pk], claim="message-1") == []
    assert pipeline.predict_studies([study.pk], claim="message-2") == []

    assert Prediction.objects.filter(study=study).count() == 1
    assert AuditEvent.objects.filter(action="prediction.made").count() == 1
    assert Study.objects.get(pk=study.pk).completed_at == study.completed_at


def test_study_held_by_another_live_message_is_left_alone(hospital_a, tiny_model):
    study = store_study(hospital_a, NORMAL_IMAGE)
    Study.objects.filter(pk=study.pk).update(status=PROCESSING, claimed_by="message-1")

    assert pipeline.predict_studies([study.pk], claim="message-2") == []

    assert Study.objects.get(pk=study.pk).status == PROCESSING
    assert Prediction.objects.count() == 0


def test_a_message_whose_studies_this_process_just_completed_is_dropped_without_a_query(
    hospital_a, tiny_model, settings
):
    settings.PIPELINE_COALESCE_WAKE_UPS = False  # every study sends its own message
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE]]
    assert pipeline.predict_studies([studies[0].pk]) == [s.pk for s in studies]  # drained both
    waiting = store_study(hospital_a, OTHER_IMAGES[0])

    with CaptureQueriesContext(connection) as queries:
        assert pipeline.predict_studies([studies[1].pk]) == []  # its study was drained above
    assert queries.captured_queries == []
    assert Study.objects.get(pk=waiting.pk).status == QUEUED  # its own message predicts it

    assert pipeline.predict_studies([waiting.pk, studies[0].pk]) == [waiting.pk]


def test_a_message_for_a_study_finished_over_a_minute_ago_claims_as_usual(
    hospital_a, tiny_model, monkeypatch, settings
):
    settings.PIPELINE_COALESCE_WAKE_UPS = False
    first, second = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE]]
    assert pipeline.predict_studies([first.pk]) == [first.pk, second.pk]
    later = time.monotonic() + 61
    monkeypatch.setattr(pipeline.finished_here, "clock", lambda: later)

    with CaptureQueriesContext(connection) as queries:
        assert pipeline.predict_studies([second.pk]) == []
    assert [_verb_and_table(query["sql"]) for query in queries.captured_queries] == [("UPDATE", "diagnostics_study")]


def test_while_a_wake_up_waits_new_studies_send_none_and_its_claim_takes_them_all(
    hospital_a, tiny_model, settings, _no_broker
):
    settings.PIPELINE_COALESCE_WAKE_UPS = True
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, OTHER_IMAGES[0]]]

    assert [pipeline.enqueue_prediction(study.pk) for study in studies] == [True, True, True]
    assert _no_broker == [[studies[0].pk]]

    # The worker takes that one message: every study stored before it is claimed.
    assert pipeline.predict_studies([studies[0].pk]) == [study.pk for study in studies]
    later = store_study(hospital_a, OTHER_IMAGES[1])
    assert pipeline.enqueue_prediction(later.pk) is True
    assert _no_broker == [[studies[0].pk], [later.pk]]


def test_a_taken_wake_up_claims_even_when_its_own_study_was_done_here(hospital_a, tiny_model, settings, _no_broker):
    settings.PIPELINE_COALESCE_WAKE_UPS = True
    first, second = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE]]
    pipeline.enqueue_prediction(first.pk)
    assert pipeline.predict_studies([first.pk]) == [first.pk, second.pk]
    # Stored while the next message waited, so it sent none: that message must claim it,
    # though its own study was completed by this process a moment ago.
    pipeline.enqueue_prediction(second.pk)
    left = store_study(hospital_a, OTHER_IMAGES[0])
    pipeline.enqueue_prediction(left.pk)
    assert _no_broker == [[first.pk], [second.pk]]

    assert pipeline.predict_studies([second.pk]) == [left.pk]


def test_a_wake_up_that_could_not_be_sent_lets_the_next_study_try(hospital_a, settings, monkeypatch):
    settings.PIPELINE_COALESCE_WAKE_UPS = True
    attempts: list[list[int]] = []
    monkeypatch.setattr(pipeline, "publish", lambda ids: attempts.append(list(ids)) and False)
    first, second = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE]]

    assert pipeline.enqueue_prediction(first.pk) is False
    assert pipeline.enqueue_prediction(second.pk) is False
    assert attempts == [[first.pk], [second.pk]]


def test_without_a_shared_cache_every_study_sends_its_own_message(hospital_a, settings, _no_broker):
    settings.PIPELINE_COALESCE_WAKE_UPS = False
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE]]

    for study in studies:
        pipeline.enqueue_prediction(study.pk)

    assert _no_broker == [[studies[0].pk], [studies[1].pk]]


def test_a_drain_that_finds_a_backlog_wakes_another_worker_once(
    hospital_a, tiny_model, monkeypatch, settings, _no_broker
):
    settings.PIPELINE_COALESCE_WAKE_UPS = True
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]]
    for study in studies:
        pipeline.enqueue_prediction(study.pk)
    assert _no_broker == [[studies[0].pk]]

    # Two full batches: the first sends one wake-up; the second finds it waiting.
    assert pipeline.predict_studies([studies[0].pk]) == [study.pk for study in studies]
    assert _no_broker == [[studies[0].pk], []]


def test_a_backlog_whose_first_claim_holds_a_restarted_study_still_wakes_another_worker(
    hospital_a, tiny_model, monkeypatch, settings, _no_broker
):
    """The claim was judged after the restarted study had been kept alone (a batch of 1):
    no other worker was woken, and a drain stopped at its deadline left the rest with no message."""
    settings.PIPELINE_COALESCE_WAKE_UPS = True
    settings.PIPELINE_DRAIN_SECONDS = 0
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]]
    Study.objects.filter(pk=studies[0].pk).update(attempts=1)  # its worker died
    for study in studies:
        pipeline.enqueue_prediction(study.pk)

    assert pipeline.predict_studies([studies[0].pk]) == [studies[0].pk]

    # The first message, the study put back beside the restarted one, with a message of its
    # own from the moment it was put back, and the wake-up for the backlog.
    assert _no_broker == [[studies[0].pk], [studies[1].pk], []]


def test_a_drain_stopped_at_its_deadline_leaves_a_wake_up_waiting_for_the_studies_left(
    hospital_a, tiny_model, monkeypatch, settings, _no_broker
):
    settings.PIPELINE_COALESCE_WAKE_UPS = True
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    settings.PIPELINE_DRAIN_SECONDS = 0
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]]
    for study in studies:
        pipeline.enqueue_prediction(study.pk)  # the first sends a message, the rest find it waiting

    assert pipeline.predict_studies([studies[0].pk]) == [studies[0].pk, studies[1].pk]

    assert _no_broker == [[studies[0].pk], []]
    assert cache.get(pipeline.wake_ups.key) == 1  # so the next upload does not send another
    assert pipeline.predict_studies([]) == [studies[2].pk, studies[3].pk]


def test_a_drain_that_keeps_up_with_a_stream_stops_at_its_deadline_and_a_wake_up_covers_the_rest(
    hospital_a, tiny_model, monkeypatch, settings, _no_broker
):
    # A study arrives while each batch is being worked on, so every claim finds one and
    # no batch is full: the drain would go on for ever but for its deadline.
    settings.PIPELINE_COALESCE_WAKE_UPS = True
    settings.PIPELINE_DRAIN_SECONDS = 0.5
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    images = [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]
    arrived: list[Study] = []
    streaming = True
    real_claim = pipeline._claim

    def claim_while_a_study_arrives(*args, **kwargs):
        claimed = real_claim(*args, **kwargs)
        if streaming and len(arrived) < 500:  # were the deadline ignored, the test ends anyway
            arrived.append(store_study(hospital_a, images[len(arrived) % len(images)]))
            pipeline.enqueue_prediction(arrived[-1].pk)  # as the upload does on commit
        return claimed

    monkeypatch.setattr(pipeline, "_claim", claim_while_a_study_arrives)
    first = store_study(hospital_a, NORMAL_IMAGE)
    started = time.monotonic()

    done = pipeline.predict_studies([first.pk])

    assert time.monotonic() - started >= 0.5
    assert done == [first.pk, *(study.pk for study in arrived[:-1])]
    assert len(done) >= 3
    left = arrived[-1]
    assert list(Study.objects.filter(status=QUEUED).values_list("pk", flat=True)) == [left.pk]
    # One message for the whole stream, sent by the first study stored after the drain
    # began; the drain sent none (no batch was full). It is still waiting, for the rest.
    assert _no_broker == [[arrived[0].pk]]
    assert cache.get(pipeline.wake_ups.key) == 1
    streaming = False
    assert pipeline.predict_studies(_no_broker[0]) == [left.pk]
    assert not Study.objects.exclude(status=COMPLETED).exists()


def test_redelivered_message_takes_over_the_studies_its_dead_worker_claimed(hospital_a, tiny_model):
    first = store_study(hospital_a, NORMAL_IMAGE)
    drained = store_study(hospital_a, PNEUMONIA_IMAGE)
    # The dead worker had claimed its own study and drained another one.
    Study.objects.filter(pk__in=[first.pk, drained.pk]).update(status=PROCESSING, claimed_by="message-1")

    assert sorted(pipeline.predict_studies([first.pk], claim="message-1")) == sorted([first.pk, drained.pk])

    # Each taken over counts as a restart, and is predicted on its own.
    assert list(Study.objects.order_by("pk").values_list("status", "attempts")) == [(COMPLETED, 1), (COMPLETED, 1)]
    assert list(Prediction.objects.order_by("study_id").values_list("batch_size", flat=True)) == [1, 1]


def test_a_study_restarted_past_the_bound_fails_and_the_studies_it_was_taken_with_complete(
    hospital_a, tiny_model, settings
):
    settings.PIPELINE_MAX_ATTEMPTS = 3
    poison = store_study(hospital_a, NORMAL_IMAGE)
    fresh = [store_study(hospital_a, PNEUMONIA_IMAGE), store_study(hospital_a, OTHER_IMAGES[0])]
    # Its worker died holding it for the third time since it was first claimed.
    Study.objects.filter(pk=poison.pk).update(status=PROCESSING, claimed_by="message-1", attempts=3)

    done = pipeline.predict_studies([poison.pk], claim="message-1")

    assert sorted(done) == [study.pk for study in fresh]
    poison.refresh_from_db()
    assert (poison.status, poison.attempts) == (FAILED, 4)
    assert poison.failure_reason == pipeline.GAVE_UP_MESSAGE.format(attempts=4)
    event = AuditEvent.objects.get(action="prediction.failed")
    assert (event.target_id, event.detail) == (str(poison.code), {"reason": "gave_up", "attempts": 4})
    # The others were claimed with it, put back, and then predicted together as usual.
    assert list(Study.objects.filter(pk__in=done).values_list("status", "attempts")) == [(COMPLETED, 0)] * 2
    assert list(Prediction.objects.values_list("batch_size", flat=True)) == [2, 2]


def test_a_restarted_study_claimed_beside_a_batch_in_hand_waits_until_the_drain_holds_nothing(
    hospital_a, tiny_model, monkeypatch
):
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    first, second = store_study(hospital_a, NORMAL_IMAGE), store_study(hospital_a, PNEUMONIA_IMAGE)
    restarted, last = store_study(hospital_a, OTHER_IMAGES[0]), store_study(hospital_a, OTHER_IMAGES[1])
    Study.objects.filter(pk=restarted.pk).update(attempts=1)  # re-queued by the sweeper

    done = pipeline.predict_studies([first.pk])

    assert sorted(done) == [first.pk, second.pk, restarted.pk, last.pk]
    # Claimed with `last` while the first batch was in the model, it went back, and was
    # predicted alone once `last` was stored.
    assert dict(Prediction.objects.values_list("study_id", "batch_size")) == {
        first.pk: 2,
        second.pk: 2,
        last.pk: 1,
        restarted.pk: 1,
    }
    restarted.refresh_from_db()
    assert restarted.started_at > Study.objects.get(pk=last.pk).completed_at
    assert restarted.attempts == 1


def test_studies_put_back_when_the_drain_reaches_its_deadline_get_a_message_of_their_own(
    hospital_a, tiny_model, settings, _no_broker
):
    settings.PIPELINE_DRAIN_SECONDS = 0
    restarted, fresh = store_study(hospital_a, NORMAL_IMAGE), store_study(hospital_a, PNEUMONIA_IMAGE)
    Study.objects.filter(pk=restarted.pk).update(attempts=1)

    assert pipeline.predict_studies([restarted.pk, fresh.pk]) == [restarted.pk]

    assert (Study.objects.get(pk=fresh.pk).status, _no_broker) == (QUEUED, [[fresh.pk]])


def test_a_study_the_sweeper_requeued_is_predicted_alone(hospital_a, tiny_model):
    requeued = store_study(hospital_a, NORMAL_IMAGE)
    Study.objects.filter(pk=requeued.pk).update(attempts=1)
    fresh = store_study(hospital_a, PNEUMONIA_IMAGE)

    assert sorted(pipeline.predict_studies([requeued.pk, fresh.pk])) == [requeued.pk, fresh.pk]

    assert dict(Prediction.objects.values_list("study_id", "batch_size")) == {requeued.pk: 1, fresh.pk: 1}
    assert list(Study.objects.order_by("pk").values_list("attempts", flat=True)) == [1, 0]


def test_one_message_drains_waiting_studies_into_one_batch_oldest_first(hospital_a, hospital_b, tiny_model):
    images = [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]
    studies = [store_study(hospital_a if i % 2 else hospital_b, image) for i, image in enumerate(images)]
    now = timezone.now()
    for age, study in enumerate(reversed(studies)):
        Study.objects.filter(pk=study.pk).update(queued_at=now - timedelta(seconds=10 * (age + 1)))

    done = pipeline.predict_studies([studies[-1].pk])

    assert done == [s.pk for s in studies]  # oldest first, all four in one call
    assert list(Prediction.objects.values_list("batch_size", flat=True)) == [4, 4, 4, 4]


def test_one_message_drains_a_backlog_in_batches_of_at_most_max_batch(hospital_a, tiny_model, monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    images = [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]
    studies = [
        store_study(hospital_a, image) for image in [*images, TRAIN / "PNEUMONIA" / "person1001_bacteria_2932.jpeg"]
    ]

    assert len(pipeline.predict_studies([studies[0].pk])) == 5

    assert Study.objects.filter(status=COMPLETED).count() == 5
    assert list(Prediction.objects.order_by("pk").values_list("batch_size", flat=True)) == [2, 2, 2, 2, 1]


def test_the_next_batch_is_claimed_and_decoded_while_the_model_predicts_the_one_before(
    hospital_a, tiny_model, monkeypatch
):
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]]
    engine = registry.get_active_engine()[1]
    real_predict, real_claim = engine.predict, pipeline._claim
    claims: list[list[int]] = []
    second_claimed = threading.Event()
    passes: list[tuple[str, int, bool]] = []

    def claim(*args, **kwargs):
        claims.append(real_claim(*args, **kwargs))
        if len(claims) == 2:
            second_claimed.set()
        return claims[-1]

    def predict(grays, **kwargs):
        # Done in turn, the second claim would come only after this pass: it would time out.
        passes.append((threading.current_thread().name, len(grays), second_claimed.wait(10)))
        return real_predict(grays, **kwargs)

    monkeypatch.setattr(pipeline, "_claim", claim)
    monkeypatch.setattr(engine, "predict", predict)

    assert pipeline.predict_studies([studies[0].pk], claim="message-1") == [study.pk for study in studies]

    # Each batch claimed once: the drain never takes back the batch it holds, though it
    # is `processing` under the same message, as a dead worker's orphans are.
    assert claims == [[studies[0].pk, studies[1].pk], [studies[2].pk, studies[3].pk], []]
    assert [(name.startswith("pleura-model"), size, overlapped) for name, size, overlapped in passes] == [
        (True, 2, True),
        (True, 2, True),
    ]


def test_pixels_claimed_while_their_twin_is_in_the_model_reuse_its_result(hospital_a, tiny_model, monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    first, other, twin, last = (
        store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, NORMAL_IMAGE, OTHER_IMAGES[0]]
    )
    engine = registry.get_active_engine()[1]
    real_predict, computed = engine.predict, []
    monkeypatch.setattr(engine, "predict", lambda grays, **kw: computed.append(len(grays)) or real_predict(grays, **kw))

    assert pipeline.predict_studies([first.pk]) == [first.pk, other.pk, last.pk, twin.pk]

    assert computed == [2, 1]
    assert Prediction.objects.get(study=twin).reused_from == Prediction.objects.get(study=first)


def test_a_failure_to_store_puts_back_both_batches_it_held(hospital_a, tiny_model, monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]]

    def database_gone(results):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(pipeline, "_store_all", database_gone)

    with pytest.raises(pipeline.TransientPipelineError) as raised:
        pipeline.predict_studies([studies[0].pk], claim="message-1")

    # The first batch failed to store while the second was in the model: both go back.
    assert raised.value.study_ids == [study.pk for study in studies]
    assert list(Study.objects.order_by("pk").values_list("status", "claimed_by")) == [(QUEUED, "")] * 4
    assert Prediction.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_claims_take_disjoint_batches_without_waiting_for_each_other(hospital_a, tiny_model, monkeypatch):
    needs_postgresql("SKIP LOCKED is PostgreSQL's; SQLite runs one writing transaction at a time")
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]]
    holding, release = threading.Event(), threading.Event()
    first: list[int] = []

    def first_worker_claims_and_holds_its_transaction():
        try:
            with transaction.atomic():
                first.extend(pipeline._claim([], "message-1"))
                holding.set()
                release.wait(10)  # without SKIP LOCKED the other claim would block until here
        finally:
            connection.close()

    thread = threading.Thread(target=first_worker_claims_and_holds_its_transaction)
    thread.start()
    assert holding.wait(10)
    second = pipeline._claim([], "message-2")
    release.set()
    thread.join()

    assert (first, second) == ([studies[0].pk, studies[1].pk], [studies[2].pk, studies[3].pk])
    owners = dict(Study.objects.values_list("pk", "claimed_by"))
    assert [owners[s.pk] for s in studies] == ["message-1", "message-1", "message-2", "message-2"]


def test_a_claim_takes_at_most_max_batch_studies_even_when_statistics_say_the_table_is_empty(
    hospital_a, tiny_model, monkeypatch
):
    # Statistics from a nearly empty table, as in a new database: PostgreSQL then may run
    # the claim's LIMIT ... FOR UPDATE SKIP LOCKED again for every row of a nested loop,
    # each run skipping the rows just claimed and taking the next ones. Seen on a GPU
    # machine: a claim of at most 2 took all 4 waiting studies.
    needs_postgresql("SQLite has neither row locks nor this planner")
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    studies = [store_study(hospital_a, NORMAL_IMAGE)]
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Study._meta.db_table}")
    studies += [store_study(hospital_a, image) for image in [PNEUMONIA_IMAGE, *OTHER_IMAGES]]

    assert pipeline._claim([], "message-1") == [studies[0].pk, studies[1].pk]
    assert Study.objects.filter(status=Study.Status.PROCESSING).count() == 2


def test_a_batch_costs_the_same_queries_whatever_its_size(hospital_a, tiny_model):
    def queries_to_predict(images) -> int:
        studies = [store_study(hospital_a, image) for image in images]
        with CaptureQueriesContext(connection) as queries:
            assert sorted(pipeline.predict_studies([studies[0].pk])) == sorted(s.pk for s in studies)
        return len(queries.captured_queries)

    queries_to_predict([NORMAL_IMAGE])  # the first batch also loads the model
    more = [TRAIN / "PNEUMONIA" / name for name in ("person1001_bacteria_2932.jpeg", "person1002_bacteria_2933.jpeg")]
    # Claim and store are one transaction each, whatever the number of studies.
    assert queries_to_predict([PNEUMONIA_IMAGE, OTHER_IMAGES[0]]) == queries_to_predict([OTHER_IMAGES[1], *more])


def test_a_batch_claims_in_one_statement_reads_in_three_and_stores_in_one_transaction(hospital_a, tiny_model):
    pipeline.predict_studies([store_study(hospital_a, NORMAL_IMAGE).pk])  # loads the model
    studies = [store_study(hospital_a, image) for image in [PNEUMONIA_IMAGE, *OTHER_IMAGES]]

    with CaptureQueriesContext(connection) as queries:
        assert pipeline.predict_studies([studies[0].pk]) == [s.pk for s in studies]

    # Claim; the claimed studies; the active and shadow versions; twins of their pixels
    # (none); while the model runs, a claim of the next batch (none waits); then
    # complete, predictions, audit events (a savepoint inside the test's transaction,
    # BEGIN and COMMIT in a worker).
    assert [_verb_and_table(query["sql"]) for query in queries.captured_queries] == [
        ("UPDATE", "diagnostics_study"),
        ("SELECT", "diagnostics_study"),
        ("SELECT", "mlcore_modelversion"),
        ("SELECT", "diagnostics_study"),
        ("UPDATE", "diagnostics_study"),
        ("SAVEPOINT", None),
        ("UPDATE", "diagnostics_study"),
        ("INSERT", "diagnostics_prediction"),
        ("INSERT", "hospital_auditevent"),
        ("RELEASE", None),
    ]


def _verb_and_table(sql: str) -> tuple[str, str | None]:
    """The statement's verb (after any WITH clause) and the first table it names."""
    table = re.search(r'(?:UPDATE|FROM|INTO) "(\w+)"', sql)
    with_clause = re.match(r"WITH .*?\)\s+(UPDATE|SELECT|INSERT|DELETE) ", sql, re.DOTALL)
    verb = with_clause.group(1) if with_clause else sql.split()[0]
    return verb, table.group(1) if table else None


def test_a_message_stops_draining_at_its_deadline(hospital_a, tiny_model, monkeypatch, settings):
    monkeypatch.setattr(pipeline, "MAX_BATCH", 2)
    settings.PIPELINE_DRAIN_SECONDS = 0
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]]

    assert len(pipeline.predict_studies([studies[0].pk])) == 2

    assert Study.objects.filter(status=COMPLETED).count() == 2
    assert Study.objects.filter(status=QUEUED).count() == 2


def test_identical_pixels_in_the_same_hospital_reuse_the_earlier_prediction(hospital_a, tiny_model):
    original = store_study(hospital_a, PNEUMONIA_IMAGE)
    pipeline.predict_studies([original.pk])
    again = store_study(hospital_a, PNEUMONIA_IMAGE, patient_id="MRN-other")

    assert pipeline.predict_studies([again.pk]) == [again.pk]

    first = Prediction.objects.get(study=original)
    reused = Prediction.objects.get(study=again)
    assert reused.reused_from == first
    assert (reused.probability, reused.label, reused.threshold) == (first.probability, first.label, first.threshold)
    assert reused.latency_ms == 0.0
    with reused.heatmap.open("rb") as a, first.heatmap.open("rb") as b:
        assert a.read() == b.read()
    assert AuditEvent.objects.get(action="prediction.made", target_id=str(again.code)).detail["reused"] is True


@pytest.mark.parametrize("heatmap_becomes", ["a folder", "nothing"])
def test_a_twin_whose_earlier_heatmap_cannot_be_read_is_computed_and_its_batch_completes(
    hospital_a, tiny_model, heatmap_becomes
):
    """Unreadable (here a folder where the file was, as a permission or a bucket's refusal
    would be), it raised for the whole batch, which went back without an attempt counted
    and, claimed first again, took every later batch with it (worker review). Gone, the
    twin was reused with no heatmap to show."""
    original = store_study(hospital_a, PNEUMONIA_IMAGE)
    pipeline.predict_studies([original.pk])
    heatmap = Path(Prediction.objects.get(study=original).heatmap.path)
    heatmap.unlink()
    if heatmap_becomes == "a folder":
        heatmap.mkdir()
    twin = store_study(hospital_a, PNEUMONIA_IMAGE, patient_id="MRN-other")
    others = [store_study(hospital_a, image) for image in OTHER_IMAGES[:2]]

    assert sorted(pipeline.predict_studies([twin.pk])) == sorted([twin.pk, *(study.pk for study in others)])

    computed = Prediction.objects.get(study=twin)
    assert (computed.reused_from, bool(computed.heatmap)) == (None, True)
    assert Study.objects.filter(status=COMPLETED).count() == 4


def test_identical_pixels_twice_in_one_batch_are_computed_once(hospital_a, tiny_model):
    first = store_study(hospital_a, NORMAL_IMAGE)
    second = store_study(hospital_a, NORMAL_IMAGE)

    assert pipeline.predict_studies([first.pk, second.pk]) == [first.pk, second.pk]

    assert Prediction.objects.get(study=second).reused_from == Prediction.objects.get(study=first)


def test_no_reuse_across_hospitals_or_model_versions(hospital_a, hospital_b, tiny_model, tmp_path):
    pipeline.predict_studies([store_study(hospital_a, NORMAL_IMAGE).pk])
    other_hospital = store_study(hospital_b, NORMAL_IMAGE)
    pipeline.predict_studies([other_hospital.pk])
    assert Prediction.objects.get(study=other_hospital).reused_from is None

    ModelVersion.objects.filter(pk=tiny_model.pk).update(status=ModelVersion.Status.RETIRED)
    newer = make_model_version(tmp_path, name="tiny-newer", seed=1)
    later = store_study(hospital_a, NORMAL_IMAGE)
    pipeline.predict_studies([later.pk])
    prediction = Prediction.objects.get(study=later)
    assert (prediction.model_version, prediction.reused_from) == (newer, None)


def test_undecodable_pixels_fail_the_study_alone_with_a_readable_reason(hospital_a, tiny_model):
    broken = store_study(hospital_a, NORMAL_IMAGE)
    with open(broken.original_file.path, "wb") as handle:
        handle.write(b"\xff\xd8\xff\xe0 this is not a JPEG any more")
    healthy = store_study(hospital_a, PNEUMONIA_IMAGE)

    assert pipeline.predict_studies([broken.pk, healthy.pk]) == [healthy.pk]

    broken.refresh_from_db()
    assert broken.status == FAILED
    assert (broken.failure_code, broken.failure_reason) == ("undecodable", pipeline.UNDECODABLE_MESSAGE)
    assert Prediction.objects.filter(study=broken).count() == 0
    event = AuditEvent.objects.get(action="prediction.failed")
    assert (event.outcome, event.detail, event.target_id) == ("failure", {"reason": "undecodable"}, str(broken.code))
    assert "MRN-4242" not in str(event.detail)


def test_a_model_that_gives_no_number_fails_the_study_instead_of_calling_it_normal(hospital_a, tiny_model, tmp_path):
    ModelVersion.objects.filter(pk=tiny_model.pk).update(status=ModelVersion.Status.RETIRED)
    make_model_version(tmp_path, name="nan-head", seed=1, head_bias=float("nan"))
    studies = [store_study(hospital_a, image) for image in (NORMAL_IMAGE, PNEUMONIA_IMAGE)]

    assert pipeline.predict_studies([study.pk for study in studies]) == []

    assert sorted(Study.objects.filter(pk__in=[s.pk for s in studies]).values_list("status", "failure_code")) == [
        (FAILED, "inference_error"),
        (FAILED, "inference_error"),
    ]
    assert Prediction.objects.count() == 0


def test_a_shadow_candidate_that_gives_no_number_stores_no_shadow_row_and_the_study_completes(
    hospital_a, tiny_model, tmp_path
):
    make_model_version(tmp_path, name="nan-candidate", seed=1, head_bias=float("nan"), status="candidate", shadow=True)
    study = store_study(hospital_a, NORMAL_IMAGE)

    assert pipeline.predict_studies([study.pk]) == [study.pk]

    assert list(Prediction.objects.values_list("model_version__name", "is_shadow")) == [("tiny-test", False)]


def test_missing_original_file_fails_with_a_readable_reason(hospital_a, tiny_model):
    study = store_study(hospital_a, NORMAL_IMAGE)
    study.original_file.storage.delete(study.original_file.name)

    assert pipeline.predict_studies([study.pk]) == []

    study.refresh_from_db()
    assert (study.status, study.failure_code, study.failure_reason) == (
        FAILED, "missing_file", pipeline.MISSING_FILE_MESSAGE,
    )  # fmt: skip


def test_a_study_failed_for_a_missing_file_is_predicted_once_its_instance_is_sent_again(hospital_a, tiny_model):
    dicom = SHARED_DATA / "dicom" / "nih-chestxray14-dx-no-finding.dcm"
    study, _ = services.ingest_upload(hospital=hospital_a, data=dicom.read_bytes(), source=Study.Source.API)
    study.original_file.storage.delete(study.original_file.name)
    assert pipeline.predict_studies([study.pk]) == []

    again, queued = services.ingest_upload(hospital=hospital_a, data=dicom.read_bytes(), source=Study.Source.API)

    assert (queued, again.pk) == (True, study.pk)
    assert pipeline.predict_studies([study.pk]) == [study.pk]
    study.refresh_from_db()
    assert (study.status, study.failure_reason, study.attempts) == (COMPLETED, "", 0)
    assert Prediction.objects.get().study == study


def test_a_storage_that_cannot_be_read_puts_the_batch_back_instead_of_failing_its_studies(
    hospital_a, tiny_model, settings, tmp_path
):
    studies = [store_study(hospital_a, NORMAL_IMAGE), store_study(hospital_a, PNEUMONIA_IMAGE)]
    mounted = settings.MEDIA_ROOT
    settings.MEDIA_ROOT = unreachable_media_root(tmp_path)

    with pytest.raises(pipeline.TransientPipelineError) as raised:
        pipeline.predict_studies([studies[0].pk], claim="message-1")

    assert raised.value.study_ids == [study.pk for study in studies]
    assert isinstance(raised.value.__cause__, pipeline.StorageUnreachable)
    assert (
        list(Study.objects.order_by("pk").values_list("status", "claimed_by", "failure_reason"))
        == [(QUEUED, "", "")] * 2
    )
    assert AuditEvent.objects.filter(action="prediction.failed").count() == 0

    settings.MEDIA_ROOT = mounted  # the storage is back: the retry predicts them
    assert pipeline.predict_studies([studies[0].pk], claim="message-1") == [study.pk for study in studies]


def test_a_heatmap_that_cannot_be_written_puts_the_batch_back_and_fails_no_study_nor_leaves_part_of_it(
    hospital_a, tiny_model, settings
):
    needs_postgresql("the file size limit would stop SQLite's own writes too")
    studies = [store_study(hospital_a, NORMAL_IMAGE), store_study(hospital_a, PNEUMONIA_IMAGE)]
    files_before = stored_files(settings.MEDIA_ROOT)
    # 100 bytes: a full disk refuses the heatmap PNGs.
    with files_limited_to(100), pytest.raises(pipeline.TransientPipelineError) as raised:
        pipeline.predict_studies([studies[0].pk], claim="message-1")

    assert raised.value.study_ids == [study.pk for study in studies]
    assert isinstance(raised.value.__cause__, pipeline.StorageUnreachable)
    assert raised.value.__cause__.__cause__.errno == errno.EFBIG
    assert (
        list(Study.objects.order_by("pk").values_list("status", "claimed_by", "failure_reason"))
        == [(QUEUED, "", "")] * 2
    )
    assert Prediction.objects.count() == 0
    assert AuditEvent.objects.filter(action="prediction.failed").count() == 0
    assert stored_files(settings.MEDIA_ROOT) == files_before


def test_without_an_active_model_the_claims_are_released_for_a_retry(hospital_a, tiny_model):
    ModelVersion.objects.filter(pk=tiny_model.pk).update(status=ModelVersion.Status.RETIRED)
    study = store_study(hospital_a, NORMAL_IMAGE)

    with pytest.raises(pipeline.TransientPipelineError) as raised:
        pipeline.predict_studies([study.pk], claim="message-1")

    assert raised.value.study_ids == [study.pk]
    study.refresh_from_db()
    assert (study.status, study.claimed_by, study.started_at) == (QUEUED, "", None)


def test_a_study_that_trips_a_constraint_does_not_hold_back_the_rest_of_its_batch(hospital_a, tiny_model):
    # A shadow prediction by the model now active (it was promoted from shadow) blocks a
    # second prediction of that study by the same version: the batch insert fails.
    blocked = store_study(hospital_a, NORMAL_IMAGE)
    others = [store_study(hospital_a, image) for image in [PNEUMONIA_IMAGE, *OTHER_IMAGES]]
    Prediction.objects.create(
        study=blocked,
        model_version=tiny_model,
        probability=0.5,
        label="normal",
        threshold=0.5,
        device="cpu",
        latency_ms=1.0,
        batch_size=1,
        is_shadow=True,
    )

    done = pipeline.predict_studies([blocked.pk])

    assert sorted(done) == sorted(study.pk for study in others)
    assert Study.objects.get(pk=blocked.pk).status == PROCESSING
    assert Prediction.objects.filter(study__in=others, is_shadow=False).count() == 3


def test_a_study_the_active_model_failed_gets_no_shadow_row_and_its_promoted_candidate_completes_it(
    hospital_a, tiny_model, tmp_path, monkeypatch
):
    """A hidden shadow row for a failed study blocked the shown one after the candidate's
    promotion (one prediction per study and version): Analyse again never completed."""
    candidate = make_model_version(
        tmp_path, name="tiny-candidate", seed=2, status=ModelVersion.Status.CANDIDATE, shadow=True
    )
    study = store_study(hospital_a, PNEUMONIA_IMAGE)
    active_engine = registry.get_active_engine()[1]

    def fails(grays, **kwargs):
        raise RuntimeError("the active model's own error")

    monkeypatch.setattr(active_engine, "predict", fails)
    assert pipeline.predict_studies([study.pk]) == []
    study.refresh_from_db()
    assert (study.status, study.failure_code) == ("failed", "inference_error")
    assert Prediction.objects.filter(study=study).count() == 0
    monkeypatch.undo()

    registry.activate(candidate)
    assert services.analyse_again(study)
    assert pipeline.predict_studies([study.pk]) == [study.pk]

    assert list(Prediction.objects.filter(study=study).values_list("model_version__name", "is_shadow")) == [
        ("tiny-candidate", False)
    ]


def test_shadow_candidate_predicts_silently_beside_the_active_model(hospital_a, tiny_model, tmp_path):
    candidate = make_model_version(
        tmp_path, name="tiny-candidate", seed=2, status=ModelVersion.Status.CANDIDATE, shadow=True
    )
    study = store_study(hospital_a, PNEUMONIA_IMAGE)

    pipeline.predict_studies([study.pk])

    assert Prediction.objects.filter(study=study).count() == 2
    shadow = Prediction.objects.get(study=study, model_version=candidate)
    assert shadow.is_shadow is True
    assert list(Prediction.objects.shown().filter(study=study).values_list("model_version__name", flat=True)) == [
        "tiny-test"
    ]


def test_the_sweeper_leaves_a_study_a_live_worker_claimed_after_it_was_found_stuck(hospital_a, _no_broker):
    """Between the sweep's read and its update the stuck claim was released and a live
    worker took the study: it was put back under that worker, whose work was thrown
    away and an attempt spent (worker review)."""
    study = store_study(hospital_a, NORMAL_IMAGE)
    Study.objects.filter(pk=study.pk).update(
        status=PROCESSING, started_at=timezone.now() - timedelta(minutes=10), claimed_by="dead"
    )
    as_the_sweep_read_it = Study.objects.get(pk=study.pk)
    Study.objects.filter(pk=study.pk).update(claimed_by="alive", started_at=timezone.now())

    assert pipeline._requeue(as_the_sweep_read_it, timezone.now()) is False
    assert Study.objects.filter(pk=study.pk, status=PROCESSING, claimed_by="alive", attempts=0).exists()


def _counted(name: str, label: str) -> dict[str, float]:
    from prometheus_client import REGISTRY

    return {s.labels[label]: s.value for metric in REGISTRY.collect() for s in metric.samples if s.name == name}


def _swept() -> dict[str, float]:
    return _counted("pleura_pipeline_swept_total", "status")


def _run_every_message(first: list[int], published: list[list[int]], limit: int = 50) -> int:
    """Run `first`, then every message the runs publish, as workers would take them; a
    retry's message too. Returns how many ran."""
    waiting, ran = [first], 0
    while waiting and ran < limit:
        ids = waiting.pop(0)
        ran += 1
        try:
            pipeline.predict_studies(ids, claim=f"message-{ran}")
        except pipeline.TransientPipelineError as postponed:
            waiting.append(postponed.study_ids)  # Celery's retry, after its backoff
        except pipeline.UnexpectedPipelineError:
            pass  # the task fails; its study waits for the sweeper
        waiting += published
        published.clear()
    return ran


def _refused_for(monkeypatch, refused: set[int] | None) -> None:
    """Storing a prediction raises for these studies (None: for every study), as a row the
    database refuses, or a defect, would."""
    computed = pipeline._computed
    patient = "MRN-4242"  # in the error's words only: the log shows its frames' code, not its words

    def refuse(study, version, result):
        if refused is None or study.pk in refused:
            raise ValueError(f"value of patient {patient} refused")
        return computed(study, version, result)

    monkeypatch.setattr(pipeline, "_computed", refuse)


def test_one_studys_unexpected_error_costs_the_others_one_attempt_and_it_waits_for_the_sweeper(
    hospital_a, tiny_model, _no_broker, monkeypatch, caplog, settings
):
    """One study's row the database refused left its batch `processing` under an acknowledged
    message until the sweeper, each study spending an attempt on another's fault, with
    nothing counted (reliability review). Now the batch goes back, each study is taken
    alone, the others complete, and the one at fault waits for the sweeper, which gives it
    up after the bound."""
    settings.PIPELINE_MAX_ATTEMPTS = 3
    studies = [store_study(hospital_a, image) for image in (NORMAL_IMAGE, PNEUMONIA_IMAGE, OTHER_IMAGES[0])]
    poison = studies[1].pk
    _refused_for(monkeypatch, {poison})

    _run_every_message([s.pk for s in studies], _no_broker)

    rows = {pk: (status, attempts) for pk, status, attempts in Study.objects.values_list("pk", "status", "attempts")}
    assert rows == {studies[0].pk: (COMPLETED, 1), poison: (PROCESSING, 1), studies[2].pk: (COMPLETED, 1)}
    assert "MRN-4242" not in caplog.text
    # An operator is told which study it is (ids are not PHI).
    assert f"an unexpected ValueError in a study taken alone after a restart of studies [{poison}] (ids)" in caplog.text
    later = timezone.now()
    for _ in range(4):
        later += timedelta(seconds=settings.PIPELINE_STUCK_SECONDS + 1)
        pipeline.sweep_stuck_studies(now=later)
        _run_every_message([poison], _no_broker)
    assert Study.objects.get(pk=poison).failure_code == "gave_up"


def test_a_defect_every_study_meets_does_not_fail_them_all_at_once(hospital_a, tiny_model, _no_broker, monkeypatch):
    """Put back at once, each study taken alone after the batch failed sent the next one
    alone on its failure: with a real worker, 20 studies gave up within 4 s (diff review).
    Each meets it once, then waits for the sweeper."""
    studies = [store_study(hospital_a, image) for image in (NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES[:2])]
    _refused_for(monkeypatch, None)

    _run_every_message([s.pk for s in studies], _no_broker)

    assert sorted(Study.objects.values_list("status", "attempts")) == [(PROCESSING, 1)] * 4


def test_an_unexpected_error_is_counted_as_a_retry_and_logged_by_its_type_only(hospital_a, monkeypatch, caplog):
    from diagnostics import tasks

    study = store_study(hospital_a, NORMAL_IMAGE)
    monkeypatch.setattr(pipeline, "retry_delay", lambda retries: 0)
    patient = "MRN-4242"  # in the error's words only: the log shows its frames' code, not its words

    def refused(*args, **kwargs):
        raise KeyError(patient)

    monkeypatch.setattr(pipeline, "_begin", refused)
    retries_before = _counted("pleura_pipeline_retries_total", "reason").get("unexpected_error", 0)

    tasks.predict_studies.apply(args=[[study.pk]])

    retries = _counted("pleura_pipeline_retries_total", "reason")["unexpected_error"] - retries_before
    assert retries == pipeline.MAX_RETRIES
    assert "MRN-4242" not in caplog.text
    assert f"an unexpected KeyError in a batch of studies [{study.pk}] (ids), at:" in caplog.text
    # A retry that ran out is pickled by Celery, as it is.
    ran_out = pipeline.TransientPipelineError([7], pipeline.UnexpectedPipelineError("X"))
    postponed = pickle.loads(pickle.dumps(ran_out))
    assert (postponed.study_ids, postponed.reason, str(postponed)) == (
        [7], "unexpected_error", "1 studies postponed: X",
    )  # fmt: skip


def test_sweeper_requeues_stuck_studies_and_gives_up_after_the_bound(hospital_a, _no_broker, settings):
    settings.PIPELINE_STUCK_SECONDS = 300
    settings.PIPELINE_MAX_ATTEMPTS = 3
    long_ago = timezone.now() - timedelta(minutes=10)
    lost = store_study(hospital_a, NORMAL_IMAGE)
    crashed = store_study(hospital_a, PNEUMONIA_IMAGE)
    hopeless = store_study(hospital_a, OTHER_IMAGES[0])
    fresh = store_study(hospital_a, OTHER_IMAGES[1])
    Study.objects.filter(pk=lost.pk).update(queued_at=long_ago)
    Study.objects.filter(pk=crashed.pk).update(status=PROCESSING, started_at=long_ago, claimed_by="dead")
    Study.objects.filter(pk=hopeless.pk).update(status=PROCESSING, started_at=long_ago, attempts=3)

    swept_before = _swept()

    result = pipeline.sweep_stuck_studies()

    assert result == pipeline.SweepResult(requeued=[lost.pk, crashed.pk], gave_up=[hopeless.pk])
    # Counted for monitoring: a worker lost again and again showed only as studies given up.
    assert {status: _swept()[status] - swept_before.get(status, 0) for status in (QUEUED, PROCESSING)} == {
        QUEUED: 1,
        PROCESSING: 1,
    }
    assert _no_broker == [[lost.pk, crashed.pk]]
    rows = {s.pk: s for s in Study.objects.all()}
    # No worker took it: its message went out again, and no attempt is counted.
    assert (rows[lost.pk].status, rows[lost.pk].attempts) == (QUEUED, 0)
    assert (rows[crashed.pk].status, rows[crashed.pk].attempts, rows[crashed.pk].claimed_by) == (QUEUED, 1, "")
    assert rows[hopeless.pk].status == FAILED
    # Tried a fourth time when it was cut short again, as the drain counts it (pipeline review).
    assert rows[hopeless.pk].failure_reason == (
        "This study could not be processed after 4 attempts. Analyse it again from its page, or send the image "
        "again; if this keeps happening, contact your Pleura administrator."
    )
    assert (rows[fresh.pk].status, rows[fresh.pk].attempts) == (QUEUED, 0)
    event = AuditEvent.objects.get(action="prediction.failed")
    assert event.detail == {"reason": "gave_up", "attempts": 4}
    # A second sweep right away finds nothing stuck.
    assert pipeline.sweep_stuck_studies() == pipeline.SweepResult(requeued=[], gave_up=[])


@pytest.mark.parametrize("meanwhile", ["claimed by a worker", "sent again by another sweep"])
def test_a_sweep_sends_no_message_for_a_study_that_changed_since_it_was_read(hospital_a, _no_broker, meanwhile):
    """The sweep reads its stuck studies, then updates each: one claimed or sent again in
    between is left alone (test review: an unconditional update failed no test)."""
    study = store_study(hospital_a, NORMAL_IMAGE)
    read_by_the_sweep = Study.objects.get(pk=study.pk)
    if meanwhile == "claimed by a worker":
        Study.objects.filter(pk=study.pk).update(status=PROCESSING, claimed_by="live", started_at=timezone.now())
    else:
        Study.objects.filter(pk=study.pk).update(resent_at=timezone.now())
    before = Study.objects.values("status", "resent_at").get(pk=study.pk)

    assert pipeline._send_again(read_by_the_sweep, timezone.now()) is False
    assert Study.objects.values("status", "resent_at").get(pk=study.pk) == before


def test_a_sweep_whose_messages_could_not_be_sent_counts_none_as_swept(hospital_a, monkeypatch, settings):
    """Counted before the publish, every study a sweep touched while the broker was down read
    as sent again (diff review)."""
    lost = store_study(hospital_a, NORMAL_IMAGE)
    Study.objects.filter(pk=lost.pk).update(
        queued_at=timezone.now() - timedelta(seconds=settings.PIPELINE_STUCK_SECONDS + 60)
    )
    monkeypatch.setattr(pipeline, "publish", lambda ids: False)  # the broker unreachable
    swept_before = _swept()

    assert pipeline.sweep_stuck_studies().requeued == [lost.pk]
    assert _swept() == swept_before


def test_a_backlog_no_worker_takes_is_sent_again_but_never_given_up_and_then_predicted_in_batches(
    hospital_a, tiny_model, _no_broker, settings
):
    """Workers down for 24 minutes (or a burst longer than that): the studies wait."""
    settings.PIPELINE_STUCK_SECONDS = 300
    settings.PIPELINE_MAX_ATTEMPTS = 3
    start = timezone.now()
    waiting = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES[:2]]]
    Study.objects.update(queued_at=start)
    ids = [s.pk for s in waiting]

    sweeps = [pipeline.sweep_stuck_studies(now=start + timedelta(minutes=m)) for m in (3, 6, 9, 12, 18, 24)]

    # Sent again once the wait passes 5 minutes, then at most once per 5 minutes.
    assert [len(s.requeued) for s in sweeps] == [0, 4, 0, 4, 4, 4]
    assert all(s.gave_up == [] for s in sweeps)
    assert _no_broker == [ids] * 4
    assert list(Study.objects.order_by("pk").values_list("status", "attempts", "queued_at")) == [(QUEUED, 0, start)] * 4

    # Not restarted studies, so not one at a time: one batch.
    assert sorted(pipeline.predict_studies([ids[0]], claim="worker-back")) == ids
    assert list(Prediction.objects.values_list("batch_size", flat=True)) == [4, 4, 4, 4]


def test_enqueue_never_raises_when_the_broker_is_unreachable(hospital_a, monkeypatch, caplog):
    from tests.pipeline.conftest import point_publisher_at

    monkeypatch.undo()  # the real publish, against a closed port
    from config.celery import app

    previous = (app.conf.broker_url, dict(app.conf.broker_transport_options or {}))
    point_publisher_at("redis://127.0.0.1:9/0", {})
    try:
        study = store_study(hospital_a, NORMAL_IMAGE)
        assert pipeline.enqueue_prediction(study.pk) is False
    finally:
        point_publisher_at(*previous)
    assert Study.objects.get(pk=study.pk).status == QUEUED
    assert "broker unreachable, 1 studies stay queued for the sweeper" in caplog.text
    assert "MRN-4242" not in caplog.text and "Doe" not in caplog.text


def test_after_the_broker_failed_the_next_uploads_do_not_ask_it_for_a_while(hospital_a, monkeypatch, caplog):
    """Each upload paid the broker's timeout again while it hung (reliability review); the
    studies stay queued, for the next message's claim or the sweeper."""
    from config.celery import app
    from tests.pipeline.conftest import point_publisher_at

    monkeypatch.undo()  # the real publish, against a closed port
    previous = (app.conf.broker_url, dict(app.conf.broker_transport_options or {}))
    point_publisher_at("redis://127.0.0.1:9/0", {})
    try:
        first, second = store_study(hospital_a, NORMAL_IMAGE), store_study(hospital_a, PNEUMONIA_IMAGE)
        outcomes = [pipeline.enqueue_prediction(first.pk), pipeline.enqueue_prediction(second.pk)]
        pipeline.broker_unanswered.reset()  # as UNANSWERED_SKIP_SECONDS later
        point_publisher_at(*previous)
        outcomes.append(pipeline.enqueue_prediction(second.pk))
    finally:
        point_publisher_at(*previous)

    assert outcomes == [False, False, True]
    warnings = [r.getMessage().split(":")[0] for r in caplog.records if r.name == "diagnostics.pipeline"]
    assert warnings == [
        "broker unreachable, 1 studies stay queued for the sweeper",
        "broker unreachable a moment ago, 1 studies stay queued for the sweeper",
    ]


def test_enqueue_gives_up_on_a_broker_that_accepts_but_never_answers(hospital_a, monkeypatch, caplog):
    """With no socket timeout, the publish waited for good, and the upload's web worker
    with it until gunicorn killed it (worker review). The join's bound only tells a hang
    from an answer: the publish gives up after the settings' 5 s."""
    from django.conf import settings as django_settings

    from config.celery import app
    from config.settings.base import redis_broker_options
    from tests.pipeline.conftest import point_publisher_at

    monkeypatch.undo()  # the real publish
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never replies
    previous = (app.conf.broker_url, dict(app.conf.broker_transport_options or {}))
    point_publisher_at(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", redis_broker_options())
    outcome = []
    try:
        study = store_study(hospital_a, NORMAL_IMAGE)
        publisher = threading.Thread(target=lambda: outcome.append(pipeline.enqueue_prediction(study.pk)))
        publisher.start()
        publisher.join(timeout=60)
    finally:
        silent.close()
        point_publisher_at(*previous)

    assert (outcome, redis_broker_options()["socket_timeout"]) == ([False], 5)
    assert django_settings.CELERY_BROKER_CONNECTION_TIMEOUT == 2
    assert Study.objects.get(pk=study.pk).status == QUEUED
    assert "broker unreachable, 1 studies stay queued for the sweeper" in caplog.text


def test_warm_up_runs_the_model_on_blank_images_of_its_input_size(tiny_model, monkeypatch):
    engine = registry.get_active_engine()[1]
    real_predict, seen, threads = engine.predict, [], set()

    def predict(grays, **kwargs):
        seen.append(grays)
        threads.add(threading.current_thread().name.split("_")[0])
        return real_predict(grays, **kwargs)

    monkeypatch.setattr(engine, "predict", predict)

    pipeline.warm_up(pool_processes=1)

    assert threads == {"pleura-model"}  # where studies are predicted: CUDA keeps handles per thread

    # Every batch size the worker may send on CUDA, where a first pass at a shape is slow.
    sizes = range(1, pipeline.MAX_BATCH + 1) if engine.device.type == "cuda" else [1]
    blank = ((64, 64), "uint8", 0)
    assert [[(gray.shape, gray.dtype.name, int(gray.max())) for gray in grays] for grays in seen] == [
        [blank] * size for size in sizes
    ]


def test_warm_up_loads_and_runs_the_shadow_candidate_too_as_it_will_be_run(tiny_model, tmp_path, monkeypatch):
    """The candidate predicts after the active model in every batch: left cold, the first
    batch's studies would wait for its weights and its first pass."""
    candidate = make_model_version(
        tmp_path, name="tiny-candidate", seed=2, status=ModelVersion.Status.CANDIDATE, shadow=True
    )
    registry.engines.clear()
    warmed = []
    real_warm_up = InferenceEngine.warm_up

    def warm_up(engine, max_batch, with_heatmap=True):
        warmed.append((engine.spec.name, with_heatmap, threading.current_thread().name.split("_")[0]))
        return real_warm_up(engine, max_batch, with_heatmap)

    monkeypatch.setattr(InferenceEngine, "warm_up", warm_up)

    pipeline.warm_up(pool_processes=1)

    assert warmed == [("tiny-test", True, "pleura-model"), ("tiny-candidate", False, "pleura-model")]

    def load(*args, **kwargs):
        raise AssertionError("loaded again by the first batch")

    monkeypatch.setattr(InferenceEngine, "__init__", load)
    assert registry.get_engine(candidate).spec.name == "tiny-candidate"  # kept, loaded, for the first batch


def test_a_failing_warm_up_pass_still_lets_the_worker_start(tiny_model, monkeypatch, caplog):
    def out_of_memory(grays, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(registry.get_active_engine()[1], "predict", out_of_memory)
    caplog.set_level("INFO", logger="diagnostics.pipeline")

    pipeline.warm_up(pool_processes=1)

    assert f"model {tiny_model.name} loaded, but its warm-up pass failed" in caplog.text
    assert f"inference worker ready: model {tiny_model.name}" in caplog.text


def _images(count: int) -> list:
    return [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES][:count]


def test_a_batch_the_soft_time_limit_cuts_short_goes_back_restarted_and_only_its_culprit_fails(
    hospital_a, tiny_model, monkeypatch, settings
):
    """Retried as it was, a batch whose decoder hung on one file hit the limit on every
    retry, and its other studies with it, and no attempt was counted."""
    from celery.exceptions import SoftTimeLimitExceeded

    from diagnostics import tasks

    settings.PIPELINE_MAX_ATTEMPTS = 2
    studies = [store_study(hospital_a, image) for image in _images(4)]
    culprit = studies[1]
    real_decode, decoded = pipeline._decode_all, []

    def hangs_on_the_culprit(batch):
        decoded.append(sorted(s.pk for s in batch))
        if culprit in batch:
            raise SoftTimeLimitExceeded()
        return real_decode(batch)

    monkeypatch.setattr(pipeline, "_decode_all", hangs_on_the_culprit)

    tasks.predict_studies.apply(args=[[studies[0].pk]], task_id="message-1")

    ids = [s.pk for s in studies]
    # The batch, then each study alone: the culprit until its attempts ran out ([] is the
    # claim that gave it up), the others once.
    assert decoded == [ids, [ids[0]], [ids[1]], [ids[1]], [], [ids[2]], [ids[3]]]
    rows = {pk: (status, code) for pk, status, code in Study.objects.values_list("pk", "status", "failure_code")}
    assert rows == {
        ids[0]: (COMPLETED, ""),
        ids[1]: (FAILED, "gave_up"),
        ids[2]: (COMPLETED, ""),
        ids[3]: (COMPLETED, ""),
    }


def test_out_of_memory_on_a_batch_predicts_its_images_one_by_one(hospital_a, tiny_model, monkeypatch):
    import torch

    studies = [store_study(hospital_a, image) for image in _images(3)]
    engine = registry.get_active_engine()[1]
    real_predict = engine.predict

    def fits_one_at_a_time(grays, **kwargs):
        if len(grays) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        return real_predict(grays, **kwargs)

    monkeypatch.setattr(engine, "predict", fits_one_at_a_time)

    assert sorted(pipeline.predict_studies([studies[0].pk])) == [s.pk for s in studies]
    assert list(Prediction.objects.values_list("batch_size", flat=True)) == [1, 1, 1]


def test_out_of_memory_even_on_one_image_fails_no_study_and_sends_them_back_restarted(
    hospital_a, tiny_model, monkeypatch
):
    """A GPU another process holds is not the images' fault: they failed 'the model could
    not analyse this image, upload it again'."""
    import torch

    studies = [store_study(hospital_a, image) for image in _images(3)]
    engine = registry.get_active_engine()[1]

    def no_memory(grays, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    monkeypatch.setattr(engine, "predict", no_memory)

    with pytest.raises(pipeline.TransientPipelineError) as raised:
        pipeline.predict_studies([studies[0].pk])

    assert sorted(raised.value.study_ids) == [s.pk for s in studies]
    assert list(Study.objects.values_list("status", "attempts", "failure_code")) == [(QUEUED, 1, "")] * 3


def test_memory_run_out_while_decoding_fails_no_study_and_sends_them_back_restarted(
    hospital_a, tiny_model, monkeypatch
):
    """Wrapped as any decoder error, a moment's memory pressure failed the study for good
    as undecodable, with no Analyse again (worker review)."""
    from diagnostics import imaging

    studies = [store_study(hospital_a, image) for image in _images(2)]

    def no_memory(data):
        raise MemoryError

    monkeypatch.setattr(imaging, "decode_upload", no_memory)

    with pytest.raises(pipeline.TransientPipelineError) as raised:
        pipeline.predict_studies([studies[0].pk])

    assert sorted(raised.value.study_ids) == [s.pk for s in studies]
    assert list(Study.objects.values_list("status", "attempts", "failure_code")) == [(QUEUED, 1, "")] * 2


def test_one_unreadable_original_goes_back_alone_its_batch_is_predicted_and_it_fails_in_the_end(
    hospital_a, tiny_model, monkeypatch, settings
):
    """A permission or a refused object is that file's, not an outage: the whole batch went
    back with it, through every retry, and the others waited for the sweeper. Alone, it
    was then taken for an outage for ever, never failed (diff review)."""
    from diagnostics import tasks

    settings.PIPELINE_MAX_ATTEMPTS = 2
    monkeypatch.setattr(pipeline, "retry_delay", lambda retries: 0)
    studies = [store_study(hospital_a, image) for image in _images(4)]
    culprit = studies[2]
    storage_refuses(monkeypatch, culprit)

    tasks.predict_studies.apply(args=[[studies[0].pk]], task_id="message-1")

    rows = {pk: (status, code) for pk, status, code in Study.objects.values_list("pk", "status", "failure_code")}
    assert rows == {s.pk: (COMPLETED, "") for s in studies if s != culprit} | {culprit.pk: (FAILED, "gave_up")}
    assert list(Prediction.objects.values_list("batch_size", flat=True)) == [3, 3, 3]


def test_an_unreadable_storage_for_every_file_of_a_batch_is_an_outage_and_counts_no_attempt(
    hospital_a, tiny_model, monkeypatch
):
    from diagnostics import imaging

    studies = [store_study(hospital_a, image) for image in _images(3)]
    monkeypatch.setattr(imaging, "read_original", lambda study: (_ for _ in ()).throw(OSError(5, "I/O error")))

    with pytest.raises(pipeline.TransientPipelineError):
        pipeline.predict_studies([studies[0].pk])

    assert list(Study.objects.values_list("status", "attempts")) == [(QUEUED, 0)] * 3


def test_a_shadow_candidate_that_will_not_load_is_tried_again_only_after_a_while(
    hospital_a, tiny_model, tmp_path, monkeypatch
):
    from mlcore import network

    candidate = make_model_version(
        tmp_path, name="tiny-candidate", seed=2, status=ModelVersion.Status.CANDIDATE, shadow=True
    )
    ModelVersion.objects.filter(pk=candidate.pk).update(weights_sha256="0" * 64)  # not its file's
    monkeypatch.setattr(pipeline, "_shadow_load_failures", {})
    hashed = []
    real_sha256 = network.file_sha256
    monkeypatch.setattr(network, "file_sha256", lambda path: hashed.append(str(path)) or real_sha256(path))
    first, second, third, later = _images(4)

    for image in (first, second, third):
        pipeline.predict_studies([store_study(hospital_a, image).pk])
    key = (candidate.pk, "0" * 64)
    pipeline._shadow_load_failures[key] -= pipeline.SHADOW_RELOAD_SECONDS  # as if that long had passed
    pipeline.predict_studies([store_study(hospital_a, later).pk])

    # The active model's weights hashed once; the candidate's once, then once more after
    # SHADOW_RELOAD_SECONDS (it was once per batch).
    assert [path.rsplit("/", 1)[-1] for path in hashed] == ["tiny-test.pt", "tiny-candidate.pt", "tiny-candidate.pt"]
    assert Study.objects.filter(status=COMPLETED).count() == 4
    assert not Prediction.objects.filter(is_shadow=True).exists()


def test_each_study_of_a_batch_gets_its_own_images_result_and_heatmap(hospital_a, tiny_model, tmp_path):
    """Batches were checked by statuses, sizes and counts only: results handed to the wrong
    studies of a batch (a patient given another's diagnosis) passed every test."""
    from diagnostics.imaging import load_grayscale
    from mlcore.engine import HEATMAP_MAX_SIDE

    candidate = make_model_version(
        tmp_path, name="tiny-candidate", seed=2, status=ModelVersion.Status.CANDIDATE, shadow=True
    )
    studies = [store_study(hospital_a, image) for image in [NORMAL_IMAGE, PNEUMONIA_IMAGE, *OTHER_IMAGES]]

    assert sorted(pipeline.predict_studies([studies[0].pk])) == [s.pk for s in studies]

    active_engine, candidate_engine = registry.get_engine(tiny_model), registry.get_engine(candidate)
    alone, alone_by_candidate, sizes = {}, {}, {}
    for study in studies:
        gray = load_grayscale(study)
        alone[study.pk] = active_engine.predict([gray], with_heatmap=False)[0].probability
        alone_by_candidate[study.pk] = candidate_engine.predict([gray], with_heatmap=False)[0].probability
        scale = min(1.0, HEATMAP_MAX_SIDE / max(gray.shape))
        sizes[study.pk] = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    assert len({round(p, 4) for p in alone.values()}) == len(studies)  # a mix-up would show
    for prediction in Prediction.objects.filter(model_version=tiny_model):
        assert prediction.batch_size == len(studies)
        assert prediction.probability == pytest.approx(alone[prediction.study_id], abs=1e-5)
        with prediction.heatmap.open("rb") as heatmap:
            assert Image.open(heatmap).size == sizes[prediction.study_id]
    for shadow in Prediction.objects.filter(model_version=candidate):
        assert shadow.probability == pytest.approx(alone_by_candidate[shadow.study_id], abs=1e-5)
    assert Prediction.objects.count() == 2 * len(studies)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (PermissionError(13, "Permission denied"), (FAILED, "gave_up")),  # the file's: it fails in the end
        (OSError(5, "Input/output error"), (QUEUED, "")),  # the storage's: it waits, uncounted
    ],
)
def test_a_study_alone_whose_file_is_refused_fails_in_the_end_and_one_in_an_outage_waits(
    hospital_a, tiny_model, monkeypatch, settings, error, outcome
):
    """Alone (the usual batch at low load), a file the storage refused was taken for an
    outage on every try and never counted: the study stayed queued for ever (diff review)."""
    from diagnostics import imaging, tasks

    settings.PIPELINE_MAX_ATTEMPTS = 2
    monkeypatch.setattr(pipeline, "retry_delay", lambda retries: 0)
    study = store_study(hospital_a, NORMAL_IMAGE)

    def fails(_study):
        raise error

    monkeypatch.setattr(imaging, "read_original", fails)

    tasks.predict_studies.apply(args=[[study.pk]], task_id="message-1")

    assert Study.objects.values_list("status", "failure_code").get(pk=study.pk) == outcome


def test_the_bucket_refusing_one_object_is_the_files_fault_and_not_reaching_it_is_an_outage():
    from botocore.exceptions import ClientError, EndpointConnectionError

    def answer(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")

    refused, failing = answer("AccessDenied", 403), answer("InternalError", 500)
    unreachable = EndpointConnectionError(endpoint_url="https://objects.hospital.example")
    # Every object gets these: the key expired, or the clock is off (an outage, review of the mends).
    credentials = [
        answer(code, 403) for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "RequestTimeTooSkewed")
    ]
    assert [media.refused_object(e) for e in credentials] == [False, False, False]

    assert [media.refused_object(e) for e in (refused, failing, unreachable, TimeoutError())] == [
        True,
        False,
        False,
        False,
    ]


def _claimed_then_written_off(hospital_a, settings, claim: str):
    """A batch claimed by `claim` and handed to the model, whose worker then froze past
    PIPELINE_STUCK_SECONDS: the sweeper put its study back in the queue."""
    study = store_study(hospital_a, NORMAL_IMAGE)
    batch = pipeline._begin([study.pk], claim, held=[], in_model=set())
    assert batch.claimed == [study.pk]
    later = timezone.now() + timedelta(seconds=settings.PIPELINE_STUCK_SECONDS + 1)
    assert pipeline.sweep_stuck_studies(now=later).requeued == [study.pk]
    return study, batch


def test_a_worker_written_off_by_the_sweeper_stores_nothing_on_the_study_it_lost(
    hospital_a, tiny_model, _no_broker, settings
):
    """It completed the study anyway, even once it had been given up and sent again with
    other pixels: the doctor saw the old image's result beside the new one (concurrency
    review). The study waits for the worker now holding it, or for the next claim."""
    study, stale = _claimed_then_written_off(hospital_a, settings, "task-A")

    assert pipeline._finish(stale) == []
    assert (Study.objects.get(pk=study.pk).status, Prediction.objects.count()) == (QUEUED, 0)

    fresh = pipeline._begin([study.pk], "task-B", held=[], in_model=set())
    assert pipeline._finish(fresh) == [study.pk]
    assert Study.objects.get(pk=study.pk).status == COMPLETED


def test_a_worker_written_off_neither_fails_nor_puts_back_a_study_another_worker_holds(
    hospital_a, tiny_model, _no_broker, settings
):
    study, stale = _claimed_then_written_off(hospital_a, settings, "task-A")
    fresh = pipeline._begin([study.pk], "task-B", held=[], in_model=set())
    as_the_stale_worker_read_it = stale.ready[0]

    assert pipeline._fail(as_the_stale_worker_read_it, "inference_error", pipeline.INFERENCE_ERROR_MESSAGE) is False
    pipeline._release(stale.claimed, stale.owner, restarted=True)

    row = Study.objects.get(pk=study.pk)
    assert (row.status, row.claimed_by, row.attempts) == (PROCESSING, fresh.owner, 1)
    assert fresh.owner.startswith("task-B#")
    assert pipeline._finish(fresh) == [study.pk]


def test_a_message_delivered_again_while_its_first_run_is_alive_is_stored_once_by_the_run_that_holds_it(
    hospital_a, tiny_model, _no_broker
):
    """A broker connection lost puts a running message back in the queue: two runs of one
    message, under one owner, passed each other's checks, and the first stored the result
    it computed under the version it had claimed with, over the second's claim (worker
    review). The second run takes the study over as an orphan; the first stores nothing."""
    study = store_study(hospital_a, NORMAL_IMAGE)
    first = pipeline._begin([study.pk], "message-7", held=[], in_model=set())
    second = pipeline._begin([study.pk], "message-7", held=[], in_model=set())

    assert first.owner != second.owner
    assert pipeline._finish(first) == []
    assert pipeline._finish(second) == [study.pk]
    assert (Study.objects.get(pk=study.pk).status, Prediction.objects.count()) == (COMPLETED, 1)


def test_a_database_lost_while_storing_leaves_no_heatmap_behind(hospital_a, tiny_model, settings, monkeypatch):
    """The retry writes heatmaps of new names: those of the failed store were left with no
    row pointing at them, a patient image nothing would ever remove (concurrency review)."""
    study = store_study(hospital_a, NORMAL_IMAGE)
    files_before = stored_files(settings.MEDIA_ROOT)

    def database_gone(events):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(pipeline.audit, "record_all", database_gone)  # inside the storing transaction
    with pytest.raises(pipeline.TransientPipelineError):
        pipeline.predict_studies([study.pk], claim="message-1")

    assert stored_files(settings.MEDIA_ROOT) == files_before
    assert (Study.objects.get(pk=study.pk).status, Prediction.objects.count()) == (QUEUED, 0)
