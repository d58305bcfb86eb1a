"""A batch's files are read and written several at once: from object storage each one is
a network round trip, and one at a time they would set a GPU worker's pace."""

from __future__ import annotations

import threading
import time

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


@pytest.fixture
def decoding_watched(monkeypatch):
    """Records how many files are being decoded at once; `meet(n)` makes each decode wait
    for n of them to be decoding together (it fails after 10 s if they never are)."""
    from diagnostics import imaging

    real_decode, lock = imaging.decode_upload, threading.Lock()
    watched = {"now": 0, "most": 0, "meeting": None}

    def decode(data):
        with lock:
            watched["now"] += 1
            watched["most"] = max(watched["most"], watched["now"])
        try:
            if watched["meeting"] is not None:
                watched["meeting"].wait()
            else:
                time.sleep(0.05)  # room for another decode to start, if it may
            return real_decode(data)
        finally:
            with lock:
                watched["now"] -= 1

    monkeypatch.setattr(imaging, "decode_upload", decode)
    watched["meet"] = lambda parties: watched.update(meeting=threading.Barrier(parties, timeout=10))
    return watched


def test_a_batch_decodes_no_more_pixels_at_once_than_the_budget(three_studies, settings, decoding_watched):
    """Decoding costs memory by the pixel; eight of the largest files at once outgrew a
    worker's memory limit."""
    sizes = [study.rows * study.columns for study in three_studies]
    settings.PIPELINE_DECODE_PIXELS = max(sizes)  # any two together are over it

    ready, grays, unreadable = pipeline._decode_all(three_studies)

    assert (len(ready), len(grays), unreadable, decoding_watched["most"]) == (3, 3, [], 1)


def test_within_the_budget_a_batchs_files_are_decoded_together(three_studies, settings, decoding_watched):
    settings.PIPELINE_DECODE_PIXELS = sum(study.rows * study.columns for study in three_studies)
    decoding_watched["meet"](3)

    ready, _, _ = pipeline._decode_all(three_studies)

    assert (len(ready), decoding_watched["most"]) == (3, 3)


def test_a_decode_that_hangs_stops_holding_the_budget(three_studies, settings, monkeypatch):
    """A hung decoder keeps its thread; counted for ever, its pixels kept every later
    decode of the process waiting, and each batch then failed its time limit."""
    hung, release = three_studies[0], threading.Event()
    settings.PIPELINE_DECODE_PIXELS = hung.rows * hung.columns  # the hung one fills it
    monkeypatch.setattr(pipeline, "DECODE_HUNG_SECONDS", 0.5)

    def hang():
        with pipeline.decode_budget.holding(hung):
            release.wait(30)

    stuck = threading.Thread(target=hang, daemon=True)
    stuck.start()
    try:
        ready, _, _ = pipeline._decode_all(three_studies[1:])  # waits for the hung one to stop counting
        assert [study.pk for study in ready] == [study.pk for study in three_studies[1:]]
        assert stuck.is_alive()  # still hung, and no longer in the way
    finally:
        release.set()
        stuck.join(10)


def test_a_read_stalled_on_the_storage_does_not_hold_the_budget(three_studies, settings, decoding_watched, monkeypatch):
    """The budget covered the read too: stalled past DECODE_HUNG_SECONDS, reads counted as
    hung decodes, and once the storage answered they decoded together, uncounted."""
    from diagnostics import imaging

    settings.PIPELINE_DECODE_PIXELS = max(study.rows * study.columns for study in three_studies)
    monkeypatch.setattr(pipeline, "DECODE_HUNG_SECONDS", 0.2)
    storage_answers, real_read = threading.Event(), imaging.read_original

    def stalled_read(study):
        storage_answers.wait(10)
        return real_read(study)

    monkeypatch.setattr(imaging, "read_original", stalled_read)
    threading.Timer(1.0, storage_answers.set).start()  # a stall five times DECODE_HUNG_SECONDS

    ready, _, _ = pipeline._decode_all(three_studies)

    assert (len(ready), decoding_watched["most"]) == (3, 1)


def test_a_read_that_hangs_past_the_time_limit_leaves_the_next_batch_every_storage_thread(settings):
    """Interrupted by the soft time limit while a read hung (a stalled mount), the pool kept
    that thread for good: each hang left the process one storage thread fewer (pipeline
    review). The pool is left to it, and the next batch gets a whole one."""
    import signal

    settings.PIPELINE_STORAGE_THREADS = 2
    storage_io = pipeline._StorageIO()
    never = threading.Event()

    class TimeLimit(Exception):
        pass

    def time_limit(signum, frame):
        raise TimeLimit

    previous = signal.signal(signal.SIGALRM, time_limit)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(TimeLimit):
            storage_io.map(lambda item: never.wait() if item == "hangs" else item, ["hangs", "reads"])
        both_at_once = threading.Barrier(2, timeout=5)

        outcomes = storage_io.map(lambda item: both_at_once.wait() is not None and item, ["next", "batch"])

        assert outcomes == ["next", "batch"]  # two threads at once: the hung one is not one of them
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        never.set()
