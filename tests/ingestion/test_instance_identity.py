"""Who a DICOM instance is of. A SOP Instance UID sent again must be a copy of the study
sent before (same pixels, patient and study), and a patient ID typed beside a DICOM may
fill in a header without one, never contradict it: both were taken on trust, and one
patient's film or result ended up under another patient (API and portal reviews)."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from django.urls import reverse
from pydicom.uid import generate_uid

from diagnostics import imaging, pipeline
from diagnostics.models import Study
from hospital.models import AuditEvent
from tests.ingestion.conftest import CR_CHEST, DX_CHEST, post_dicom_body, post_file
from tests.ingestion.test_sent_again import failed
from tests.ingestion.test_stow import failed as stow_failure
from tests.ingestion.test_stow import related_body, stow

CONFLICT = imaging.InstanceConflict().detail
MISMATCH = imaging.PatientMismatch().detail


def another_patients_instance_with_the_uid_of(path) -> bytes:
    """Another patient's radiograph that a misconfigured device gave the same SOP Instance UID."""
    dataset = pydicom.dcmread(path, force=True)
    dataset.PatientName = "Other^Patient"
    dataset.PatientID = "MRN-OTHER-999"
    dataset.StudyInstanceUID = generate_uid()
    # Another film: this one upside down (bytes reversed, a 16-bit image became noise).
    rows = np.frombuffer(dataset.PixelData, dtype=f"<u{dataset.BitsAllocated // 8}").reshape(dataset.Rows, -1)
    dataset.PixelData = np.ascontiguousarray(rows[::-1]).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def _as_stored(study: Study) -> tuple:
    study.refresh_from_db()
    fields = ("status", "patient_id", "patient_name", "study_instance_uid", "pixel_sha256", "original_file")
    return tuple(str(getattr(study, name)) for name in fields)


def test_an_instance_uid_sent_before_for_another_patient_is_409_and_the_first_study_is_untouched(emr, stored):
    assert post_dicom_body(emr, DX_CHEST.read_bytes()).status_code == 202
    study = Study.objects.get()
    before, files = _as_stored(study), stored()

    response = post_dicom_body(emr, another_patients_instance_with_the_uid_of(DX_CHEST))

    assert (response.status_code, response.json()) == (409, {"detail": CONFLICT})
    assert Study.objects.count() == 1 and _as_stored(study) == before
    assert stored() == files
    event = AuditEvent.objects.get(action="study.upload_rejected")
    assert (event.outcome, event.detail["status_code"], event.detail["reason"]) == ("failure", 409, CONFLICT)


def test_a_failed_study_is_not_overwritten_by_another_patients_instance_with_its_uid(emr, stored):
    assert post_file(emr, CR_CHEST.read_bytes()).status_code == 202
    study = failed(Study.objects.get(), Study.Failure.UNDECODABLE, pipeline.UNDECODABLE_MESSAGE)
    before, files = _as_stored(study), stored()

    response = post_dicom_body(emr, another_patients_instance_with_the_uid_of(CR_CHEST))

    assert (response.status_code, response.json()) == (409, {"detail": CONFLICT})
    assert _as_stored(study) == before  # still failed, still the first patient's, with its file
    assert stored() == files


def test_stow_refuses_such_an_instance_as_a_duplicate_sop_instance(emr, stored):
    assert post_dicom_body(emr, DX_CHEST.read_bytes()).status_code == 202
    files = stored()

    response = stow(emr, related_body(("application/dicom", another_patients_instance_with_the_uid_of(DX_CHEST))))

    assert response.status_code == 409
    assert response.json() == {"00081198": {"vr": "SQ", "Value": [stow_failure(0x0111, DX_CHEST)]}}
    assert stored() == files


def test_the_same_instance_sent_again_is_still_answered_with_its_study(emr):
    first = post_dicom_body(emr, DX_CHEST.read_bytes())
    again = post_file(emr, DX_CHEST.read_bytes(), patient_id="Covid0000")  # its header's own ID, typed
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("typed", ["MRN-A-TYPED", "covid0000"])
def test_a_typed_patient_id_that_contradicts_the_dicom_header_is_refused(typed, client_for, doctor, emr, stored):
    """DX_CHEST's header says Covid0000. The upload page keeps the ID typed for the files
    before, so a DICOM of the next patient was stored under the last one's ID, beside
    the name from its own header."""
    files = stored()
    portal = client_for(doctor)
    with DX_CHEST.open("rb") as radiograph:
        page = portal.post(
            reverse("diagnostics:upload"), {"files": radiograph, "patient_id": typed}, HTTP_HX_REQUEST="true"
        )
    api = post_file(emr, DX_CHEST.read_bytes(), patient_id=typed)

    assert page.status_code == 409
    assert MISMATCH in page.content.decode().replace("&#x27;", "'")
    assert (api.status_code, api.json()) == (409, {"detail": MISMATCH})
    assert Study.objects.count() == 0 and stored() == files
    assert AuditEvent.objects.filter(action="study.upload_rejected", detail__status_code=409).count() == 2


def test_a_typed_patient_id_fills_in_a_header_without_one(emr):
    """CR_CHEST's header has no Patient ID."""
    response = post_file(emr, CR_CHEST.read_bytes(), patient_id="MRN-7001")
    assert response.status_code == 202
    assert Study.objects.get().patient_id == "MRN-7001"


def test_another_patients_instance_stored_meanwhile_is_still_refused(emr, stored, monkeypatch):
    """The first copy committed between this upload's check and its insert: the insert's
    unique constraint then handed back the first patient's study (200), never compared."""
    from diagnostics import services

    assert post_dicom_body(emr, DX_CHEST.read_bytes()).status_code == 202
    files = stored()
    monkeypatch.setattr(
        services, "_existing", lambda hospital, decoded, typed, accession: None
    )  # checked before it landed

    response = post_dicom_body(emr, another_patients_instance_with_the_uid_of(DX_CHEST))

    assert (response.status_code, response.json()) == (409, {"detail": CONFLICT})
    assert Study.objects.count() == 1 and stored() == files
