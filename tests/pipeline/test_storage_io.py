"""A batch's files are read and written several at once: from object storage each one is
a network round trip, and one at a time they would set a GPU worker's pace."""

from __future__ import annotations

import threading

import pytest
from django.core.files.storage import FileSystemStorage

from diagnostics import pipeline
from diagnostics.models import Prediction, Study
from tests.pipeline.conftest import NORMAL_IMAGE, OTHER_IMAGES, PNEUMONIA_IMAGE, store_study
from tests.pipeline.meeting_storage import DOTTED_PATH, MeetingStorage

pytestmark = pytest.mark.django_db


@pytest.fixture
def three_studies(hospital_a, tiny_model) -> list[Study]:
    return [store_study(hospital_a, image) for image in (PNEUMONIA_IMAGE, NORMAL_IMAGE, OTHER_IMAGES[0])]


@pytest.fixture
def meeting_storage(settings):
    """Studies stored from now on are read and written through MeetingStorage."""

    def meet(parties: int, failing_heatmap_writes: int = 0) -> None:
        MeetingStorage.barrier = threading.Barrier(parties, timeout=10)
        MeetingStorage.failing_heatmap_writes = failing_heatmap_writes
        settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": DOTTED_PATH}}

    yield meet
    MeetingStorage.barrier = threading.Barrier(1)
    MeetingStorage.failing_heatmap_writes = 0


def test_a_batch_reads_its_originals_and_writes_its_heatmaps_at_once(three_studies, meeting_storage):
    meeting_storage(parties=3)

    done = pipeline.predict_studies([study.pk for study in three_studies])

    assert sorted(done) == sorted(study.pk for study in three_studies)
    predictions = Prediction.objects.filter(study__in=three_studies)
    assert predictions.count() == 3
    assert {prediction.batch_size for prediction in predictions} == {3}
    for prediction in predictions:
        assert prediction.heatmap.storage.exists(prediction.heatmap.name)


def test_a_heatmap_that_cannot_be_written_removes_the_batchs_others_and_puts_the_batch_back(
    three_studies, meeting_storage, settings
):
    meeting_storage(parties=3, failing_heatmap_writes=1)
    folders = {f"studies/{study.hospital.code}/{study.code}" for study in three_studies}

    with pytest.raises(pipeline.TransientPipelineError) as raised:
        pipeline.predict_studies([study.pk for study in three_studies])

    assert isinstance(raised.value.__cause__, pipeline.StorageUnreachable)
    assert str(raised.value.__cause__.__cause__) == "the object store refused the write"
    storage = FileSystemStorage()
    assert [name for folder in folders for name in storage.listdir(folder)[1] if name.startswith("heatmap")] == []
    assert Prediction.objects.filter(study__in=three_studies).count() == 0
    # Back in the queue for the task's retry, none of them failed for the storage's fault.
    assert set(Study.objects.filter(pk__in=[s.pk for s in three_studies]).values_list("status", "failure_reason")) == {
        (Study.Status.QUEUED, "")
    }


def test_with_one_storage_thread_the_files_are_read_in_turn(three_studies, settings):
    settings.PIPELINE_STORAGE_THREADS = 1
    calls = []
    outcomes = pipeline.storage_io.map(lambda study: calls.append(threading.get_ident()) or study.pk, three_studies)

    assert outcomes == [study.pk for study in three_studies]
    assert set(calls) == {threading.get_ident()}


def test_each_files_error_comes_back_in_its_place(three_studies):
    def read(study):
        if study == three_studies[1]:
            raise FileNotFoundError(study.original_file.name)
        return study.pk

    outcomes = pipeline.storage_io.map(read, three_studies)

    assert outcomes[0] == three_studies[0].pk and outcomes[2] == three_studies[2].pk
    assert isinstance(outcomes[1], FileNotFoundError)


def test_studies_of_one_batch_reusing_one_prediction_each_get_its_heatmap(hospital_a, tiny_model):
    original = store_study(hospital_a, PNEUMONIA_IMAGE)
    pipeline.predict_studies([original.pk])
    copies = [store_study(hospital_a, PNEUMONIA_IMAGE, patient_id=f"MRN-{n}") for n in range(4)]

    assert pipeline.predict_studies([study.pk for study in copies]) == [study.pk for study in copies]

    source = Prediction.objects.get(study=original)
    with source.heatmap.open("rb") as handle:
        expected = handle.read()
    for prediction in Prediction.objects.filter(study__in=copies):
        assert prediction.reused_from == source
        with prediction.heatmap.open("rb") as handle:
            assert handle.read() == expected
