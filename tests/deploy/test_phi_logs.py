"""Patient identifiers never reach the logs: every log record of a whole study's life
(upload, prediction, viewing, search, review, and the error paths around them) is
captured at DEBUG and searched for the patient's name, IDs and birth date."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pydicom
import pytest
import torch
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from config.safe_paths import SafePathFilter
from diagnostics import pipeline
from diagnostics.models import Study
from diagnostics.observability import JsonFormatter, RequestIdFilter
from mlcore import registry
from mlcore.models import ModelVersion
from mlcore.network import build_network, save_weights
from tests.conftest import SHARED_DATA

CHEST_DICOM = SHARED_DATA / "dicom" / "nih-chestxray14-dx-no-finding.dcm"
CHEST_JPEG = SHARED_DATA / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg"
FAMILY, GIVEN = "Quillfeather", "Zebedee"
DICOM_PATIENT_ID = "PHI-LOG-99317"
TYPED_PATIENT_ID = "MRN-TYPED-55120"
NUMERIC_PATIENT_ID = "0012345678"
BIRTH_DATE = "19410307"
# The portal's form always sends its two text fields, empty when not typed.
NO_IDS = {"patient_id": "", "accession_number": ""}
PHI = (FAMILY, GIVEN, DICOM_PATIENT_ID, TYPED_PATIENT_ID, BIRTH_DATE, "1941-03-07", "07.03.1941")


def _jpeg_with_phi_in_its_exif() -> bytes:
    """A PACS or phone export: the patient's name and birth date in ImageDescription and Artist."""
    from PIL import Image

    exif = Image.Exif()
    exif[270] = f"{FAMILY}^{GIVEN} {BIRTH_DATE}"  # ImageDescription
    exif[315] = FAMILY  # Artist
    buffer = io.BytesIO()
    Image.open(CHEST_JPEG).save(buffer, "JPEG", exif=exif)
    return buffer.getvalue()


def _dicom_with_phi() -> bytes:
    dataset = pydicom.dcmread(CHEST_DICOM)
    dataset.PatientName = f"{FAMILY}^{GIVEN}"
    dataset.PatientID = DICOM_PATIENT_ID
    dataset.PatientBirthDate = BIRTH_DATE
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def active_model(db, tmp_path) -> ModelVersion:
    """A randomly initialised network of the real architecture: enough to run the pipeline."""
    torch.manual_seed(0)
    path = tmp_path / "phi-test.pt"
    sha256 = save_weights(build_network("resnet18"), path)
    registry.engines.clear()
    yield ModelVersion.objects.create(
        name="phi-test",
        architecture="resnet18",
        image_size=64,
        weights_path=str(path),
        weights_sha256=sha256,
        threshold=0.5,
        status=ModelVersion.Status.ACTIVE,
    )
    registry.engines.clear()


def _every_rendering(record: logging.LogRecord) -> str:
    """The record as every handler could write it: message, args, extras, JSON, traceback."""
    RequestIdFilter().filter(record)
    SafePathFilter().filter(record)
    parts = [record.getMessage(), repr(record.args), repr(vars(record)), JsonFormatter().format(record)]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


def test_patient_identifiers_never_reach_the_logs(client, doctor, radiologist, active_model, caplog):
    caplog.set_level(logging.DEBUG)
    dicom = _dicom_with_phi()

    # Upload by a doctor, with the header's patient ID typed into the form as well; then
    # with another ID typed, which contradicts the header and is refused.
    client.force_login(doctor)
    upload = SimpleUploadedFile("chest.dcm", dicom, content_type="application/dicom")
    response = client.post("/upload/", {"files": upload, "patient_id": DICOM_PATIENT_ID, "accession_number": "A-1"})
    assert response.status_code == 201
    study = Study.objects.get()
    assert (study.patient_name, study.patient_id) == (f"{FAMILY}^{GIVEN}", DICOM_PATIENT_ID)
    assert study.patient_birth_date.isoformat() == "1941-03-07"
    contradicting = SimpleUploadedFile("chest.dcm", dicom, content_type="application/dicom")
    assert client.post("/upload/", {"files": contradicting, "patient_id": TYPED_PATIENT_ID}).status_code == 409
    # A JPEG whose EXIF names the patient, with a patient ID typed for it.
    jpeg = SimpleUploadedFile("chest.jpg", _jpeg_with_phi_in_its_exif(), content_type="image/jpeg")
    assert client.post("/upload/", {"files": jpeg, "patient_id": TYPED_PATIENT_ID}).status_code == 201
    photo = Study.objects.get(patient_id=TYPED_PATIENT_ID)
    # The same file again (idempotent repeat), and a truncated copy that must be refused.
    repeat = client.post("/upload/", {"files": SimpleUploadedFile("again.dcm", dicom, "application/dicom"), **NO_IDS})
    assert repeat.status_code == 200
    broken = client.post("/upload/", {"files": SimpleUploadedFile("cut.dcm", dicom[: len(dicom) // 2]), **NO_IDS})
    assert broken.status_code in (400, 415, 422)

    # Prediction, as the worker runs it.
    assert pipeline.predict_studies([study.id, photo.id]) == [study.id, photo.id]
    study.refresh_from_db()
    assert study.status == Study.Status.COMPLETED

    # Viewing: worklist, a search by patient ID, the study page, its image and heatmap.
    code = study.code
    for url in ("/", f"/studies/{code}/", f"/studies/{code}/image/", f"/studies/{code}/heatmap/"):
        assert client.get(url).status_code == 200, url
    assert client.post("/", {"q": TYPED_PATIENT_ID}).status_code == 200
    assert client.get(f"/studies/{uuid.uuid4()}/").status_code == 404

    # Review by a radiologist, then a refused one (a doctor may not review).
    client.force_login(radiologist)
    other_label = "normal" if study.predictions.get().label == "pneumonia" else "pneumonia"
    review = client.post(f"/studies/{code}/review/", {"verdict": "disagree", "correct_label": other_label})
    assert review.status_code == 302
    client.force_login(doctor)
    assert client.post(f"/studies/{code}/review/", {"verdict": "agree"}).status_code == 403

    request_lines = [r for r in caplog.records if r.name == "pleura.request"]
    assert len(request_lines) == 13  # every request above was logged, so capture really worked
    rendered = "\n".join(_every_rendering(record) for record in caplog.records)
    for identifier in PHI:
        assert identifier.lower() not in rendered.lower(), f"{identifier} reached the logs"
    assert all(json.loads(JsonFormatter().format(r))["logger"] == r.name for r in caplog.records)


def test_a_patient_id_sent_where_a_code_belongs_never_reaches_the_logs(client, doctor, key_a, caplog):
    """An interface engine that put a patient's ID in a study's URL, or a media type of its
    own making, put it in every log line (security review)."""
    from rest_framework.test import APIClient

    caplog.set_level(logging.DEBUG)
    emr = APIClient()
    emr.credentials(HTTP_AUTHORIZATION=f"Bearer {key_a[1]}")
    assert emr.get(f"/api/v1/studies/{DICOM_PATIENT_ID}/").status_code == 404
    # Many hospitals' patient IDs are all digits: they passed for DICOM UIDs (code review).
    assert emr.get(f"/api/v1/studies/{NUMERIC_PATIENT_ID}/heatmap/").status_code == 404
    dicom = "multipart/related; type=application/dicom; boundary=x"
    assert emr.post(f"/dicomweb/studies/{NUMERIC_PATIENT_ID}", b"", content_type=dicom).status_code == 400
    # A birth date written with dots looked like a UID (diff review).
    assert emr.post("/dicomweb/studies/07.03.1941", b"", content_type=dicom).status_code == 400
    assert emr.post("/dicomweb/studies/", b"x", content_type=f"application/x-{FAMILY}").status_code == 415
    client.force_login(doctor)
    assert client.get(f"/studies/{TYPED_PATIENT_ID}/").status_code == 404
    assert client.get(f"/{FAMILY}/chest").status_code == 404  # a word first, where no route begins
    # Django's own warning of a refused CSRF check names the path (security review).
    anonymous = Client(enforce_csrf_checks=True)
    assert anonymous.post(f"/admin/diagnostics/study/{FAMILY}-{DICOM_PATIENT_ID}/change/").status_code == 403

    paths = [r.http_path for r in caplog.records if r.name == "pleura.request"]
    rendered = "\n".join(_every_rendering(record) for record in caplog.records)
    assert paths == [
        "/api/v1/studies/<not a code>/",
        "/api/v1/studies/<not a code>/heatmap/",
        "/dicomweb/studies/<not a code>",
        "/dicomweb/studies/<not a code>",
        "/dicomweb/studies/",
        "/studies/… (a path Pleura does not serve)",
        "(a path Pleura does not serve)",
        "/admin/diagnostics/study/<not a code>/change/",
    ]
    csrf = next(record for record in caplog.records if record.name == "django.security.csrf")
    assert csrf.getMessage() == "Forbidden (CSRF cookie not set.): /admin/diagnostics/study/<not a code>/change/"
    # The filter is the console handler's: every line written passes it.
    assert settings.LOGGING["handlers"]["console"]["filters"] == ["request_id", "safe_path"]
    for identifier in (*PHI, NUMERIC_PATIENT_ID):
        assert identifier.lower() not in rendered.lower(), f"{identifier} reached the logs"
