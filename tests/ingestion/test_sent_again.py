"""A failed study's instance sent again. Every failure message asks the doctor or the EMR
to send the image again, and a SOP Instance UID is one study per hospital, so the copy
replaces the study's file and the same study is queued anew: through the API, DICOMweb
and the portal. A study that did not fail is returned as it is, as before."""

from __future__ import annotations

import re
import threading
from dataclasses import replace

import pytest
from django.urls import reverse
from django.utils import timezone

from diagnostics import imaging, pipeline, services, tasks
from diagnostics.models import Study
from hospital.models import AuditEvent
from tests.conftest import needs_postgresql
from tests.ingestion.conftest import CR_CHEST, DX_CHEST, ingest_at_once, post_dicom_body, post_file
from tests.ingestion.test_outages import STORAGE_DOWN
from tests.ingestion.test_stow import referenced, related_body, stow


def failed(study: Study, code: str, message: str) -> Study:
    """`study` as the worker leaves one it failed."""
    Study.objects.filter(pk=study.pk).update(
        status=Study.Status.FAILED, failure_code=code, failure_reason=message, attempts=3, completed_at=timezone.now()
    )
    study.refresh_from_db()
    return study


@pytest.fixture
def failed_study(emr) -> Study:
    """CR_CHEST sent by the EMR, then failed because its file went missing."""
    assert post_file(emr, CR_CHEST.read_bytes()).status_code == 202
    study = Study.objects.get()
    study.original_file.storage.delete(study.original_file.name)
    return failed(study, Study.Failure.MISSING_FILE, pipeline.MISSING_FILE_MESSAGE)


def test_a_failed_study_sent_again_gets_the_new_copy_and_is_queued_anew(
    emr, failed_study, stored, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = post_dicom_body(emr, CR_CHEST.read_bytes())

    assert (again.status_code, again.json()["id"], again.json()["status"]) == (202, str(failed_study.code), "queued")
    study = Study.objects.get()
    assert (
        study.status, study.failure_code, study.failure_reason, study.attempts, study.claimed_by, study.completed_at
    ) == ("queued", "", "", 0, "", None)  # fmt: skip
    assert study.queued_at > failed_study.queued_at
    assert re.fullmatch(
        rf"studies/{study.hospital.code}/{study.code}/original-[0-9a-f]{{12}}\.dcm", study.original_file.name
    )
    with study.original_file.open("rb") as copy:
        assert copy.read() == CR_CHEST.read_bytes()
    assert stored().files == {study.original_file.name}
    assert [callback.args for callback in callbacks if callback.func is tasks.enqueue_prediction] == [(study.pk,)]
    event = AuditEvent.objects.filter(action="study.uploaded").latest("id")
    assert (event.target_id, event.actor_key_id) == (str(study.code), failed_study.uploaded_by_key_id)
    assert event.detail == {"source": "api", "created": False, "format": "dcm", "warnings": [], "sent_again": True}


def test_the_copy_replaces_the_files_of_a_study_that_failed_with_them(emr, stored, django_capture_on_commit_callbacks):
    assert post_file(emr, DX_CHEST.read_bytes()).status_code == 202
    study = Study.objects.get()
    services.display_image_of(study)  # the portal's picture, drawn by a first viewer
    before = stored().files
    failed(study, Study.Failure.GAVE_UP, pipeline.GAVE_UP_MESSAGE.format(attempts=3))

    with django_capture_on_commit_callbacks(execute=True):
        assert post_dicom_body(emr, DX_CHEST.read_bytes()).status_code == 202

    study.refresh_from_db()
    assert len(before) == 2
    assert stored().files == {study.original_file.name}
    assert study.original_file.name not in before
    assert (study.display_image.name, study.status) == ("", "queued")
    assert study.warnings == ["adult"]  # taken anew from the copy's header


def test_a_study_that_did_not_fail_is_returned_as_it_is(emr, stored):
    assert post_file(emr, CR_CHEST.read_bytes()).status_code == 202
    Study.objects.update(status=Study.Status.COMPLETED)
    before = stored()

    again = post_dicom_body(emr, CR_CHEST.read_bytes())

    assert (again.status_code, again.json()["status"]) == (200, "completed")
    assert stored() == replace(before, uploaded_events=before.uploaded_events + 1)


def test_a_study_queued_by_another_request_meanwhile_keeps_its_file_and_this_copy_is_removed(
    hospital_a, failed_study, stored, monkeypatch
):
    """Both requests saw the study failed; the conditional update lets one queue it."""
    stale = Study.objects.get()
    Study.objects.update(status=Study.Status.QUEUED, failure_code="", failure_reason="", attempts=0)
    before = stored()
    monkeypatch.setattr(services, "_existing", lambda hospital, decoded, typed, accession: stale)

    study, queued = services.ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source="api")

    assert (queued, study.status, study.original_file.name) == (False, "queued", failed_study.original_file.name)
    assert stored() == replace(before, uploaded_events=before.uploaded_events + 1)


def test_a_copy_the_storage_cannot_take_leaves_the_failed_study_as_it_was(emr, failed_study, stored, storage_down):
    before = stored()

    storage_down()
    response = post_dicom_body(emr, CR_CHEST.read_bytes())
    storage_down.up()

    assert (response.status_code, response.json(), response["Retry-After"]) == (503, {"detail": STORAGE_DOWN}, "60")
    assert stored() == before
    refused = AuditEvent.objects.get(action="study.upload_rejected")
    assert (refused.detail["status_code"], refused.detail["reason"]) == (503, STORAGE_DOWN)
    study = Study.objects.get()
    assert (study.status, study.failure_code, study.failure_reason, study.original_file.name) == (
        "failed", "missing_file", pipeline.MISSING_FILE_MESSAGE, failed_study.original_file.name,
    )  # fmt: skip


def test_dicomweb_and_the_portal_send_a_failed_study_again_too(emr, failed_study, client_for, doctor):
    stow_response = stow(emr, related_body(("application/dicom", CR_CHEST.read_bytes())))
    assert (stow_response.status_code, stow_response.json()) == (
        200,
        {"00081199": {"vr": "SQ", "Value": [referenced(CR_CHEST)]}},
    )
    assert Study.objects.get().status == "queued"

    failed(failed_study, Study.Failure.INFERENCE_ERROR, pipeline.INFERENCE_ERROR_MESSAGE)
    with CR_CHEST.open("rb") as radiograph:
        portal = client_for(doctor).post(reverse("diagnostics:upload"), {"files": radiograph}, HTTP_HX_REQUEST="true")

    assert portal.status_code == 201
    assert "<strong>Received</strong> and queued for analysis" in portal.content.decode()
    assert (Study.objects.get().status, Study.objects.count()) == ("queued", 1)


@pytest.mark.django_db(transaction=True)
def test_two_copies_sent_at_once_queue_the_study_once_and_leave_one_file(hospital_a, stored, monkeypatch):
    needs_postgresql("two requests writing at once (SQLite runs one writing transaction at a time)")
    data = CR_CHEST.read_bytes()
    study, _ = services.ingest_upload(hospital=hospital_a, data=data, source=Study.Source.API)
    failed(study, Study.Failure.GAVE_UP, pipeline.GAVE_UP_MESSAGE.format(attempts=3))
    both_written = threading.Barrier(2, timeout=10)
    queue_if_failed = services._queue_if_failed

    def after_both_wrote_their_copy(*args, **kwargs):
        both_written.wait()
        return queue_if_failed(*args, **kwargs)

    monkeypatch.setattr(services, "_queue_if_failed", after_both_wrote_their_copy)
    answers, errors = ingest_at_once(hospital_a, data)

    assert errors == []
    assert sorted(queued for _, queued in answers) == [False, True]
    study.refresh_from_db()
    assert (study.status, study.attempts) == ("queued", 0)
    assert stored().files == {study.original_file.name}
    assert AuditEvent.objects.filter(action="study.uploaded", detail__sent_again=True).count() == 1


def test_an_identifier_typed_for_the_study_stays_unless_one_is_typed_for_the_copy(client_for, doctor):
    """CR_CHEST's header names no patient, so the doctor typed one. Sending the copy again
    with the field left empty must not leave the study without its patient."""
    client = client_for(doctor)

    def upload(**typed):
        with CR_CHEST.open("rb") as radiograph:
            response = client.post(
                reverse("diagnostics:upload"), {"files": radiograph, **typed}, HTTP_HX_REQUEST="true"
            )
        assert response.status_code == 201
        return Study.objects.get()

    study = upload(patient_id="MRN-7001", accession_number="ACC-7001")
    failed(study, Study.Failure.MISSING_FILE, pipeline.MISSING_FILE_MESSAGE)

    study = upload()
    assert (study.status, study.patient_id, study.accession_number) == ("queued", "MRN-7001", "ACC-7001")

    failed(study, Study.Failure.MISSING_FILE, pipeline.MISSING_FILE_MESSAGE)
    study = upload(accession_number="ACC-7002")
    assert (study.status, study.patient_id, study.accession_number) == ("queued", "MRN-7001", "ACC-7002")


def test_a_picture_drawn_from_the_copy_being_replaced_is_not_kept(emr, stored):
    """A doctor opened the failed study as the EMR sent it again: the picture drawn from
    the old file was kept for good beside the new one the model reads (concurrency review)."""
    assert post_file(emr, CR_CHEST.read_bytes()).status_code == 202
    study = failed(Study.objects.get(), Study.Failure.UNDECODABLE, pipeline.UNDECODABLE_MESSAGE)
    opened_before = Study.objects.get(pk=study.pk)  # the viewer's row: the original it will read

    assert post_dicom_body(emr, CR_CHEST.read_bytes()).status_code == 202  # the copy replaces it
    assert not services.display_image_of(opened_before)

    study.refresh_from_db()
    assert not study.display_image
    assert not any("display-" in name for name in stored().files)
    drawn = services.display_image_of(study)  # the next viewer draws from the new copy
    assert Study.objects.get(pk=study.pk).display_image.name == drawn.name


def test_an_identifier_typed_for_a_copy_fills_in_a_study_that_has_none(client_for, doctor):
    """Sent first with no patient ID (CR_CHEST's header names none), then again with one,
    the radiograph was "already received" and the ID dropped: the worklist never found it
    under that patient (UX review). A blank is filled; an identifier is never replaced
    (CR_CHEST's header has its accession number)."""
    client = client_for(doctor)

    def upload(**typed):
        with CR_CHEST.open("rb") as radiograph:
            response = client.post(
                reverse("diagnostics:upload"), {"files": radiograph, **typed}, HTTP_HX_REQUEST="true"
            )
        return response.status_code, Study.objects.get()

    upload()
    Study.objects.update(status=Study.Status.COMPLETED)
    first_accession = Study.objects.get().accession_number
    status_code, study = upload(patient_id="MRN-8001")
    assert (status_code, study.status, study.patient_id) == (200, "completed", "MRN-8001")
    status_code, study = upload(accession_number="ACC-8002")  # another order: refused (below)
    assert (status_code, study.patient_id, study.accession_number) == (409, "MRN-8001", first_accession)

    events = AuditEvent.objects.filter(action="study.uploaded").order_by("id")
    assert [event.detail.get("filled_in") for event in events] == [None, ["patient_id"]]


def test_an_instance_sent_again_under_another_accession_number_is_409_and_keeps_its_study(emr, stored):
    """It was answered 200 with the new accession number dropped, though the API says a
    typed one replaces the header's: the EMR's search under the new order found nothing
    (EMR review)."""
    assert post_file(emr, CR_CHEST.read_bytes(), accession_number="ACC-FIRST").status_code == 202
    Study.objects.update(status=Study.Status.COMPLETED)
    before = stored()

    again = post_file(emr, CR_CHEST.read_bytes(), accession_number="ACC-OTHER")
    same = post_file(emr, CR_CHEST.read_bytes(), accession_number="ACC-FIRST")
    untyped = post_file(emr, CR_CHEST.read_bytes())

    assert (again.status_code, again.json()) == (409, {"detail": imaging.AccessionConflict().detail})
    assert (same.status_code, untyped.status_code) == (200, 200)
    assert list(Study.objects.values_list("accession_number", "status")) == [("ACC-FIRST", "completed")]
    assert stored().files == before.files


def test_a_copy_racing_the_first_upload_under_another_accession_number_is_409_too(emr, stored, monkeypatch):
    """Stored by another request between this one's check and its insert, the instance's
    study was answered 200 with the typed accession number dropped (diff review)."""
    assert post_file(emr, CR_CHEST.read_bytes(), accession_number="ACC-FIRST").status_code == 202
    before = stored()
    monkeypatch.setattr(
        services, "_existing", lambda hospital, decoded, typed, accession: None
    )  # not yet seen: the race

    again = post_file(emr, CR_CHEST.read_bytes(), accession_number="ACC-OTHER")

    assert (again.status_code, again.json()) == (409, {"detail": imaging.AccessionConflict().detail})
    assert list(Study.objects.values_list("accession_number", flat=True)) == ["ACC-FIRST"]
    assert stored().files == before.files
    assert AuditEvent.objects.filter(action="study.upload_rejected").count() == 1


def test_the_same_film_for_another_patient_is_taken_and_both_studies_say_so(emr, stored):
    """A PNG or JPEG has no SOP Instance UID: one film uploaded for three patients was filed
    under each with no word (portal review). Refused, the right patient's film could never
    be analysed once the wrong one had it (diff review): both are taken and flagged."""
    from tests.ingestion.conftest import PNEUMONIA_JPEG

    film = PNEUMONIA_JPEG.read_bytes()
    first = post_file(emr, film, patient_id="MRN-WRONG")
    second = post_file(emr, film, patient_id="MRN-RIGHT")

    assert (first.status_code, second.status_code) == (202, 202)
    assert [w["code"] for w in second.json()["warnings"]] == ["same_film_other_patient"]
    assert dict(Study.objects.values_list("patient_id", "warnings")) == {
        "MRN-WRONG": ["same_film_other_patient"],
        "MRN-RIGHT": ["same_film_other_patient"],
    }
    # No patient named contradicts none; the same patient again is still one of two.
    unnamed = post_file(emr, film)
    assert (unnamed.status_code, unnamed.json()["warnings"]) == (202, [])
    assert Study.objects.count() == 3


def test_a_copy_of_a_failed_study_beaten_to_it_under_another_accession_number_is_409(
    emr, failed_study, stored, monkeypatch
):
    """Another request queued the failed study again, under its own accession number, just
    before this one: this one was answered 200 with its typed number dropped (code review)."""

    def beaten_to_it(failed, resent, data, audit_context, *, refreshed):
        # The other request's copy, queued first: this one's conditional update finds it queued.
        Study.objects.filter(pk=failed.pk).update(status=Study.Status.QUEUED, accession_number="ACC-WINNER")
        return False

    monkeypatch.setattr(services, "_queue_again", beaten_to_it)

    again = post_file(emr, CR_CHEST.read_bytes(), accession_number="ACC-LOSER")

    assert (again.status_code, again.json()) == (409, {"detail": imaging.AccessionConflict().detail})
    assert Study.objects.get().accession_number == "ACC-WINNER"
