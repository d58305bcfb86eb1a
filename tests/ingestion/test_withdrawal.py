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
from tests.ingestion.conftest import CR_CHEST, DX_CHEST, PNEUMONIA_JPEG, STUDIES_URL, post_dicom_body, post_file
from tests.ingestion.test_instance_identity import another_patients_instance_with_the_uid_of
from tests.ingestion.test_sent_again import failed

REASON = "Another patient's film"


def withdraw(client: APIClient, study: Study, body: dict | None = None):
    return client.post(
        f"{STUDIES_URL}{study.code}/withdraw/", {"reason": REASON} if body is None else body, format="json"
    )


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


def test_a_film_filed_under_three_patients_keeps_its_warning_while_two_remain(emr):
    film = PNEUMONIA_JPEG.read_bytes()
    for patient in ("MRN-1", "MRN-2", "MRN-3"):
        post_file(emr, film, patient_id=patient)

    withdraw(emr, Study.objects.get(patient_id="MRN-1"))

    assert sorted(Study.objects.filter(withdrawn_at=None).values_list("patient_id", "warnings")) == [
        ("MRN-2", ["same_film_other_patient"]),
        ("MRN-3", ["same_film_other_patient"]),
    ]
