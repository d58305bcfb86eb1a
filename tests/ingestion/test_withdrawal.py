"""Withdrawing a study filed in error, through the API, and what it changes at ingestion.

A film filed under the wrong patient could not be taken back: the same film for the right
patient was flagged (or, for a DICOM instance, refused as another patient's) for good, and
the wrong study stayed in the worklist and the training export (diff review). A withdrawn
study is kept with who, when and why, and its instance may be filed again."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from diagnostics import pipeline
from diagnostics.models import Study
from hospital.models import AuditEvent
from tests.conftest import needs_postgresql
from tests.ingestion.conftest import (
    CR_CHEST,
    DX_CHEST,
    PNEUMONIA_JPEG,
    STUDIES_URL,
    a_picture,
    make_dicom,
    post_dicom_body,
    post_file,
)
from tests.ingestion.test_instance_identity import another_patients_instance_with_the_uid_of
from tests.ingestion.test_sent_again import failed

REASON = "Another patient's film"


def withdraw(client: APIClient, study: Study, body: dict | str | None = None):
    url = f"{STUDIES_URL}{study.code}/withdraw/"
    if isinstance(body, str):  # a form body, as written
        return client.post(url, body, content_type="application/x-www-form-urlencoded")
    return client.post(url, {"reason": REASON} if body is None else body, format="json")


def test_the_emr_withdraws_a_study_and_reads_it_back_withdrawn_with_its_reason(emr, key_a):
    assert post_dicom_body(emr, DX_CHEST.read_bytes()).status_code == 202
    study = Study.objects.get()

    response = withdraw(emr, study)

    study.refresh_from_db()
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["withdrawal_reason"]) == (str(study.code), REASON)
    assert body["withdrawn_at"] == study.withdrawn_at.isoformat().replace("+00:00", "Z")
    assert (study.withdrawn_by, study.withdrawn_by_key, study.withdrawal_reason) == (None, key_a[0], REASON)
    assert study.updated_at == study.withdrawn_at  # an EMR following changes sees it
    event = AuditEvent.objects.get(action="study.withdrawn")
    # The reason is free text that may name the patient: it stays out of the trail.
    assert (event.actor_key, event.actor_user, event.target_id, event.detail) == (key_a[0], None, str(study.code), {})
    assert emr.get(f"{STUDIES_URL}{study.code}/").json()["withdrawal_reason"] == REASON


def test_withdrawing_a_withdrawn_study_again_changes_nothing(emr):
    assert post_dicom_body(emr, DX_CHEST.read_bytes()).status_code == 202
    study = Study.objects.get()
    first = withdraw(emr, study).json()

    again = withdraw(emr, study, {"reason": "A duplicate"})

    assert (again.status_code, again.json()) == (200, first)
    assert AuditEvent.objects.filter(action="study.withdrawn").count() == 1


@pytest.mark.parametrize(
    ("body", "answer"),
    [
        ({}, {"detail": "Say why the study is withdrawn (for example: another patient's film)."}),
        ({"reason": "   "}, {"detail": "Say why the study is withdrawn (for example: another patient's film)."}),
        ({"reason": "x" * 301}, {"detail": "The reason must be at most 300 characters."}),
        ({"reason": "bad\x00byte"}, {"detail": "The reason may contain printable text only."}),
        ({"reason": 5}, {"detail": "reason must be a string."}),
        ({"reason": REASON, "patient_id": "MRN-1"}, {"detail": "A withdrawal reads only a reason, not patient_id."}),
        (["not", "an", "object"], {"detail": "The body must be an object with a reason."}),
        ("reason=a&reason=b", {"detail": "The reason was sent twice: send it once."}),
    ],
)
def test_a_withdrawal_pleura_cannot_keep_is_400_in_words_and_changes_nothing(emr, body, answer):
    assert post_dicom_body(emr, DX_CHEST.read_bytes()).status_code == 202
    study = Study.objects.get()

    response = withdraw(emr, study, body)

    assert (response.status_code, response.json()) == (400, answer)
    study.refresh_from_db()
    assert (study.withdrawn_at, study.withdrawal_reason) == (None, "")
    assert not AuditEvent.objects.filter(action="study.withdrawn").exists()


def test_another_hospitals_key_gets_404_and_a_hospital_admin_403(
    emr, key_client, key_b, session_client, hospital_admin
):
    assert post_dicom_body(emr, DX_CHEST.read_bytes()).status_code == 202
    study = Study.objects.get()

    outsider = withdraw(key_client(key_b[1]), study)
    admin = withdraw(session_client(hospital_admin), study)

    assert (outsider.status_code, admin.status_code) == (404, 403)
    study.refresh_from_db()
    assert study.withdrawn_at is None


def test_the_instance_of_a_withdrawn_study_is_filed_again_under_the_right_patient(emr):
    """Without the withdrawal, the corrected instance is refused as another patient's (409)."""
    assert post_dicom_body(emr, DX_CHEST.read_bytes()).status_code == 202
    wrong = Study.objects.get()
    withdraw(emr, wrong)

    instance = another_patients_instance_with_the_uid_of(DX_CHEST)
    corrected = post_dicom_body(emr, instance)

    assert corrected.status_code == 202
    right = Study.objects.get(code=corrected.json()["id"])
    assert right.pk != wrong.pk
    assert (right.sop_instance_uid, right.patient_id, right.withdrawn_at, right.status) == (
        wrong.sop_instance_uid, "MRN-OTHER-999", None, "queued",
    )  # fmt: skip
    # Sent again, the corrected instance is the filed study's copy.
    again = post_dicom_body(emr, instance)
    assert (again.status_code, again.json()["id"]) == (200, str(right.code))
    assert Study.objects.count() == 2


def test_a_copy_of_a_withdrawn_instance_is_answered_with_the_withdrawn_study(emr):
    """An EMR resending what was withdrawn does not file the error again."""
    assert post_dicom_body(emr, DX_CHEST.read_bytes()).status_code == 202
    study = Study.objects.get()
    withdraw(emr, study)

    again = post_dicom_body(emr, DX_CHEST.read_bytes())

    assert (again.status_code, again.json()["id"], again.json()["withdrawal_reason"]) == (200, str(study.code), REASON)
    assert Study.objects.count() == 1


def test_a_withdrawn_failed_study_is_not_queued_again_by_a_copy(emr):
    assert post_file(emr, CR_CHEST.read_bytes()).status_code == 202
    study = failed(Study.objects.get(), Study.Failure.UNDECODABLE, pipeline.UNDECODABLE_MESSAGE)
    withdraw(emr, study)

    again = post_dicom_body(emr, CR_CHEST.read_bytes())

    assert (again.status_code, again.json()["status"]) == (200, "failed")
    study.refresh_from_db()
    assert (study.status, study.attempts) == ("failed", 3)


def test_the_right_patients_film_loses_the_same_film_warning_when_the_wrong_one_is_withdrawn(emr):
    film = PNEUMONIA_JPEG.read_bytes()
    post_file(emr, film, patient_id="MRN-WRONG")
    post_file(emr, film, patient_id="MRN-RIGHT")
    wrong = Study.objects.get(patient_id="MRN-WRONG")

    withdraw(emr, wrong)

    assert dict(Study.objects.values_list("patient_id", "warnings")) == {
        "MRN-WRONG": ["same_film_other_patient"],
        "MRN-RIGHT": [],
    }
    # The withdrawn study contradicts no later upload either.
    later = post_file(emr, film, patient_id="MRN-RIGHT")
    assert (later.status_code, later.json()["warnings"]) == (202, [])


def test_the_same_film_at_another_hospital_neither_contradicts_nor_keeps_a_warning(emr, key_b, key_client):
    """Each hospital's films are its own: unscoped, the lookup flagged Riverside's upload
    with St Mary's patients, and the settling kept St Mary's warning for Riverside's patient
    after the wrong film was withdrawn (test review: breaking either scope failed no test)."""
    film = PNEUMONIA_JPEG.read_bytes()
    riverside = key_client(key_b[1])
    post_file(emr, film, patient_id="MRN-WRONG")
    post_file(emr, film, patient_id="MRN-RIGHT")

    elsewhere = post_file(riverside, film, patient_id="MRN-OTHER")
    withdraw(emr, Study.objects.get(patient_id="MRN-WRONG"))

    assert (elsewhere.status_code, elsewhere.json()["warnings"]) == (202, [])
    assert sorted(Study.objects.values_list("hospital__slug", "patient_id", "warnings")) == [
        ("riverside", "MRN-OTHER", []),
        ("st-marys", "MRN-RIGHT", []),
        ("st-marys", "MRN-WRONG", ["same_film_other_patient"]),
    ]


def test_a_film_filed_under_three_patients_keeps_its_warning_while_two_remain(emr):
    film = PNEUMONIA_JPEG.read_bytes()
    for patient in ("MRN-1", "MRN-2", "MRN-3"):
        post_file(emr, film, patient_id=patient)

    withdraw(emr, Study.objects.get(patient_id="MRN-1"))

    assert sorted(Study.objects.filter(withdrawn_at=None).values_list("patient_id", "warnings")) == [
        ("MRN-2", ["same_film_other_patient"]),
        ("MRN-3", ["same_film_other_patient"]),
    ]


def test_a_copy_of_a_withdrawn_instance_is_answered_with_it_once_the_right_patients_is_filed(emr):
    """An EMR sending its first message again got a 409 telling the site to check its device,
    once the right patient's instance was filed (withdrawal review)."""
    original = DX_CHEST.read_bytes()
    assert post_dicom_body(emr, original).status_code == 202
    wrong = Study.objects.get()
    withdraw(emr, wrong)
    instance = another_patients_instance_with_the_uid_of(DX_CHEST)
    right = post_dicom_body(emr, instance).json()

    again = post_dicom_body(emr, original)
    withdraw(emr, Study.objects.get(code=right["id"]))
    after_both = post_dicom_body(emr, original)

    assert (again.status_code, again.json()["id"]) == (200, str(wrong.code))
    assert (after_both.status_code, after_both.json()["id"]) == (200, str(wrong.code))
    assert Study.objects.count() == 2


def test_an_instance_withdrawn_for_want_of_a_patient_id_is_filed_anew_under_the_one_typed(emr):
    """A copy with the ID typed was answered with the withdrawn study, and the ID written into
    the record withdrawn for the record (diff review)."""
    unnamed = make_dicom(a_picture(), PatientID="")
    assert post_dicom_body(emr, unnamed).status_code == 202
    withdrawn = Study.objects.get()
    withdraw(emr, withdrawn, {"reason": "No patient ID"})

    refiled = post_file(emr, unnamed, patient_id="MRN-RIGHT")

    assert refiled.status_code == 202
    assert refiled.json()["id"] != str(withdrawn.code)
    assert dict(Study.objects.values_list("code", "patient_id")) == {
        withdrawn.code: "", Study.objects.get(code=refiled.json()["id"]).code: "MRN-RIGHT",
    }  # fmt: skip


def test_an_upload_stored_while_its_contradiction_was_withdrawn_loses_the_warning_at_the_commit(
    emr, hospital_a, doctor, django_capture_on_commit_callbacks
):
    """The withdrawal cleared what it saw, and the right patient's upload, checked before the
    withdrawal and stored after its clearing, kept a warning nothing cleared (withdrawal review)."""
    from diagnostics.withdrawal import withdraw_study

    film = PNEUMONIA_JPEG.read_bytes()
    post_file(emr, film, patient_id="MRN-WRONG")
    wrong = Study.objects.get()
    with django_capture_on_commit_callbacks(execute=False) as after_commit:
        withdraw_study(wrong, reason=REASON, user=doctor)
        # The upload that found the wrong film still filed, stored after the clearing:
        post_file(emr, film, patient_id="MRN-RIGHT")
        right = Study.objects.get(patient_id="MRN-RIGHT")
        Study.objects.filter(pk=right.pk).update(warnings=["same_film_other_patient"])

    for callback in after_commit:
        callback()

    right.refresh_from_db()
    assert right.warnings == []


@pytest.mark.django_db(transaction=True)
def test_two_films_of_one_picture_withdrawn_at_once_are_both_withdrawn(hospital_a, doctor, radiologist):
    """Each locked its own row, then waited for the other's: PostgreSQL broke the deadlock,
    and one doctor was told the database was down (withdrawal review)."""
    import threading

    from django.db import connections

    from diagnostics import services
    from diagnostics.withdrawal import withdraw_study

    needs_postgresql("two withdrawals in two transactions at once")
    film = PNEUMONIA_JPEG.read_bytes()
    for patient in ("MRN-1", "MRN-2"):
        services.ingest_upload(hospital=hospital_a, data=film, source=Study.Source.API, patient_id=patient)
    studies = list(Study.objects.order_by("pk"))
    together, errors = threading.Barrier(2, timeout=30), []

    def withdraw_one(study, user):
        try:
            together.wait()
            withdraw_study(study, reason=REASON, user=user)
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=withdraw_one, args=pair) for pair in zip(studies, (doctor, radiologist))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert Study.objects.filter(withdrawn_at__isnull=False).count() == 2


def test_an_instance_withdrawn_for_the_wrong_order_is_filed_anew_under_the_right_one(emr):
    """Typed, the right accession number was refused as moving the study to another order
    (409); in the header, the withdrawn study was answered and nothing filed (diff review)."""
    import io

    import pydicom

    original = DX_CHEST.read_bytes()
    assert post_file(emr, original, accession_number="ACC-WRONG").status_code == 202
    withdraw(emr, Study.objects.get(), {"reason": "Wrong order"})

    typed = post_file(emr, original, accession_number="ACC-RIGHT")
    dataset = pydicom.dcmread(io.BytesIO(original))
    dataset.AccessionNumber = "ACC-RIGHT-2"
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    withdraw(emr, Study.objects.get(code=typed.json()["id"]), {"reason": "Wrong order again"})
    in_header = post_dicom_body(emr, buffer.getvalue())

    assert (typed.status_code, typed.json()["accession_number"], typed.json()["withdrawn_at"]) == (
        202, "ACC-RIGHT", None,
    )  # fmt: skip
    assert (in_header.status_code, in_header.json()["accession_number"]) == (202, "ACC-RIGHT-2")


def test_an_emr_repeating_its_first_message_after_an_id_was_filled_in_gets_the_withdrawn_study(emr):
    """A copy with a patient ID filled in the blank the first message left; withdrawn, the
    first message repeated byte for byte was filed again as a new study (diff review)."""
    first = make_dicom(a_picture(), PatientID="")
    assert post_dicom_body(emr, first).status_code == 202
    assert post_file(emr, first, patient_id="MRN-WRONG-9").status_code == 200  # filled in
    study = Study.objects.get()
    withdraw(emr, study)

    repeated = post_dicom_body(emr, first)

    assert (repeated.status_code, repeated.json()["id"]) == (200, str(study.code))
    assert Study.objects.count() == 1
