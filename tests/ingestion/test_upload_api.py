"""Uploading real radiographs: every DICOM file in ../shared/data/dicom, every pixel-data
file pydicom ships that is a picture, and real PNG/JPEG chest X-rays, through the REST
API (integration key and portal session) and the ingestion service itself."""

from __future__ import annotations

import hashlib
import re
from functools import partial

import numpy as np
import pydicom
import pytest
from django.db import OperationalError

from diagnostics import services, tasks
from diagnostics.dicom import patient_age_years
from diagnostics.imaging import decode_upload
from diagnostics.models import Study
from diagnostics.services import display_image_of, ingest_upload
from hospital.models import AuditEvent
from tests.ingestion.conftest import (
    CR_CHEST,
    DX_CHEST,
    NORMAL_JPEG,
    PNEUMONIA_JPEG,
    PNEUMONIA_PNG,
    SHARED_DICOM,
    STUDIES_URL,
    TIBIA,
    a_picture,
    decode_png,
    make_dicom,
    post_dicom_body,
    post_file,
    pydicom_file,
)

SHARED_FILES = sorted(p.name for p in SHARED_DICOM.glob("*.dcm"))
PYDICOM_PICTURES = [
    "693_J2KI.dcm",  # JPEG 2000, CT
    "CT_small.dcm",  # rescale slope/intercept
    "ExplVR_BigEnd.dcm",  # big endian, RGB
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless, YBR_RCT
    "J2K_pixelrep_mismatch.dcm",
    "JPEG2000.dcm",
    "JPGExtended.dcm",  # JPEG extended, 12 bit
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "SC_rgb_dcmtk_+eb+cy+np.dcm",  # JPEG baseline, YBR_FULL_422
    "SC_rgb_gdcm_KY.dcm",
    "SC_rgb_jls_lossy_line.dcm",  # JPEG-LS near lossless, colour
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless process 14
    "SC_rgb_rle_16bit_2frame.dcm",  # multi-frame, 16-bit colour
    "SC_rgb_rle_2frame.dcm",  # multi-frame
    "SC_ybr_full_422_uncompressed.dcm",
    "examples_jpeg2k.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",  # PALETTE COLOR
    "examples_rgb_color.dcm",
    "examples_ybr_color.dcm",  # 30 frames, JPEG baseline
    "image_dfl.dcm",  # deflated
]
STUDY_FIELDS = {
    "id",
    "image_url",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "status",
    "failure_reason",
    "failure_code",
    "accession_number",
    "created_at",
    "updated_at",
    "prediction",
    "reviews",
    "warnings",
    "withdrawn_at",
    "withdrawal_reason",
}


def expected_warnings(ds) -> list[str]:
    codes = []
    body_part = str(ds.get("BodyPartExamined", "") or "").upper()
    modality = str(ds.get("Modality", "") or "").upper()
    if body_part and body_part not in {"CHEST", "THORAX", "LUNG"}:
        codes.append("not_chest")
    if modality and modality not in {"CR", "DX"}:
        codes.append("not_radiograph")
    age = patient_age_years(ds)  # its own rules are tested in test_decoding.py
    if age is not None and age >= 18:
        codes.append("adult")
    elif age is not None and not 1 <= age < 6:
        codes.append("child_outside_trained_ages")
    view = str(ds.get("ViewPosition", "") or "").upper()
    if view and not view.startswith(("PA", "AP")):
        codes.append("not_frontal")
    if int(ds.get("NumberOfFrames") or 1) > 1:
        codes.append("first_frame_only")
    return codes


def assert_stored(study: Study, data: bytes, *, fmt: str) -> None:
    """The row and the original say what the file says; the picture, drawn on first
    request, shows the decoded pixels."""
    decoded = decode_upload(data)
    assert study.status == Study.Status.QUEUED
    assert study.queued_at is not None
    assert study.original_format == fmt
    assert study.original_size == len(data)
    assert study.original_sha256 == hashlib.sha256(data).hexdigest()
    assert study.pixel_sha256 == decoded.pixel_sha256
    assert (study.rows, study.columns) == decoded.gray.shape
    with study.original_file.open("rb") as handle:
        assert handle.read() == data
    assert study.original_file.name == f"studies/{study.hospital.code}/{study.code}/original.{fmt}"
    assert not study.display_image
    assert re.fullmatch(
        rf"studies/{study.hospital.code}/{study.code}/display-[0-9a-f]{{12}}\.png", display_image_of(study).name
    )
    study.refresh_from_db()
    with study.display_image.open("rb") as handle:
        display = decode_png(handle.read())
    if max(decoded.gray.shape) <= 1024:
        np.testing.assert_array_equal(display, decoded.gray)
    else:
        assert max(display.shape) == 1024


def assert_dicom_metadata(study: Study, path) -> None:
    ds = pydicom.dcmread(path, force=True)
    assert study.sop_instance_uid == ds.SOPInstanceUID
    assert study.sop_class_uid == ds.SOPClassUID
    assert study.study_instance_uid == str(ds.get("StudyInstanceUID", ""))
    assert study.series_instance_uid == str(ds.get("SeriesInstanceUID", ""))
    assert study.modality == str(ds.get("Modality", "")).upper()
    assert study.photometric_interpretation == ds.PhotometricInterpretation
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    assert study.transfer_syntax_uid == (syntax or "1.2.840.10008.1.2")
    assert study.warnings == expected_warnings(ds)


@pytest.mark.parametrize("name", SHARED_FILES)
def test_shared_dicom_files_upload_with_an_integration_key(name, key_a, key_client):
    key, raw = key_a
    path = SHARED_DICOM / name
    data = path.read_bytes()
    response = post_file(key_client(raw), data, name="whatever.txt")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert set(body) == STUDY_FIELDS
    study = Study.objects.get(code=body["id"])
    assert response["Location"] == f"http://testserver{STUDIES_URL}{study.code}/"
    assert study.hospital == key.hospital
    assert study.source == Study.Source.API
    assert study.uploaded_by_key == key
    assert study.uploaded_by is None
    assert body["status"] == "queued"
    assert body["prediction"] is None
    assert body["reviews"] == []
    assert [w["code"] for w in body["warnings"]] == study.warnings
    assert_stored(study, data, fmt="dcm")
    assert_dicom_metadata(study, path)


@pytest.mark.parametrize("name", PYDICOM_PICTURES)
def test_pydicom_pixel_data_files_upload_as_raw_application_dicom(name, key_a, key_client):
    _, raw = key_a
    path = pydicom_file(name)
    data = path.read_bytes()
    response = post_dicom_body(key_client(raw), data)
    assert response.status_code == 202, response.json()
    study = Study.objects.get(code=response.json()["id"])
    assert_stored(study, data, fmt="dcm")
    assert_dicom_metadata(study, path)


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("JPEGLSNearLossless_08.dcm", "The image is 10x45 pixels: too small to be a radiograph"),
        ("JPEGLSNearLossless_16.dcm", "The image is 10x50 pixels: too small to be a radiograph"),
        ("SC_rgb_small_odd_big_endian.dcm", "The image is 3x3 pixels: too small to be a radiograph"),
        ("SC_jpeg_no_color_transform.dcm", "The image is one shade of grey throughout: it shows no anatomy."),
    ],
)
def test_pydicom_pixel_data_files_too_small_or_of_one_shade_are_refused_with_words(name, detail, key_a, key_client):
    """The model read blank and tiny pictures as pneumonia at 99.99% (ingestion review)."""
    response = post_dicom_body(key_client(key_a[1]), pydicom_file(name).read_bytes())
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)
    assert not Study.objects.exists()


@pytest.mark.parametrize("name", SHARED_FILES)
def test_shared_dicom_files_upload_with_a_doctor_session(name, doctor, session_client, hospital_a):
    data = (SHARED_DICOM / name).read_bytes()
    # A typed ID may fill in a header without one, or repeat the header's.
    header = pydicom.dcmread(SHARED_DICOM / name, stop_before_pixels=True, force=True)
    patient_id = str(header.get("PatientID", "")) or "MRN-77"
    response = post_file(session_client(doctor), data, accession_number="ACC-9", patient_id=patient_id)
    assert response.status_code == 202, response.json()
    study = Study.objects.get(code=response.json()["id"])
    assert study.hospital == hospital_a
    assert study.uploaded_by == doctor
    assert study.uploaded_by_key is None
    assert study.accession_number == "ACC-9"
    assert study.patient_id == patient_id
    assert response.json()["accession_number"] == "ACC-9"
    assert_stored(study, data, fmt="dcm")


@pytest.mark.parametrize(("path", "fmt"), [(NORMAL_JPEG, "jpg"), (PNEUMONIA_JPEG, "jpg"), (PNEUMONIA_PNG, "png")])
def test_real_png_and_jpeg_chest_xrays_upload(path, fmt, key_a, key_client):
    _, raw = key_a
    data = path.read_bytes()
    response = post_file(key_client(raw), data, name="scan.dcm", patient_id="MRN-1", accession_number="A-1")
    assert response.status_code == 202, response.json()
    study = Study.objects.get(code=response.json()["id"])
    assert_stored(study, data, fmt=fmt)
    assert (study.patient_id, study.accession_number) == ("MRN-1", "A-1")
    assert study.sop_instance_uid == ""
    assert study.warnings == []
    assert study.rows == 224


@pytest.mark.parametrize(
    ("path", "fmt"),
    [(CR_CHEST, "dcm"), (DX_CHEST, "dcm"), (TIBIA, "dcm"), (NORMAL_JPEG, "jpg"), (PNEUMONIA_PNG, "png")],
)
def test_portal_upload_service_stores_and_queues(path, fmt, hospital_a, doctor, django_capture_on_commit_callbacks):
    data = path.read_bytes()
    with django_capture_on_commit_callbacks() as callbacks:
        study, created = ingest_upload(hospital=hospital_a, data=data, source=Study.Source.PORTAL, user=doctor)
    assert created is True
    assert study.source == Study.Source.PORTAL
    assert study.uploaded_by == doctor
    assert_stored(Study.objects.get(pk=study.pk), data, fmt=fmt)
    assert len(callbacks) == 1
    assert isinstance(callbacks[0], partial)
    assert callbacks[0].func is tasks.enqueue_prediction
    assert callbacks[0].args == (study.pk,)
    event = AuditEvent.objects.get(action="study.uploaded")
    assert (event.actor_user, event.hospital, event.target_id) == (doctor, hospital_a, str(study.code))
    assert event.detail == {"source": "portal", "created": True, "format": study.original_format,
                            "warnings": study.warnings}  # fmt: skip


def test_dicom_identifiers_are_kept_when_the_form_leaves_them_blank(hospital_a):
    data = make_dicom(a_picture(), PatientID="MRN-5", AccessionNumber="ACC-5")
    study, _ = ingest_upload(
        hospital=hospital_a, data=data, source=Study.Source.API, patient_id="", accession_number=""
    )
    assert (study.patient_id, study.accession_number, study.patient_name) == ("MRN-5", "ACC-5", "Doe^Jane")


def test_same_sop_instance_again_returns_the_existing_study_with_200(key_a, key_client, stored):
    _, raw = key_a
    client = key_client(raw)
    first = post_file(client, CR_CHEST.read_bytes())
    before = stored()
    again = post_dicom_body(client, CR_CHEST.read_bytes())
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    after = stored()
    assert (after.studies, after.files) == (before.studies, before.files)
    assert Study.objects.count() == 1


def test_another_hospital_posting_the_same_uid_gets_its_own_study(key_a, key_b, key_client, hospital_a, hospital_b):
    a = post_file(key_client(key_a[1]), CR_CHEST.read_bytes())
    b = post_file(key_client(key_b[1]), CR_CHEST.read_bytes())
    assert (a.status_code, b.status_code) == (202, 202)
    assert a.json()["id"] != b.json()["id"]
    assert Study.objects.get(code=a.json()["id"]).hospital == hospital_a
    assert Study.objects.get(code=b.json()["id"]).hospital == hospital_b
    assert Study.objects.filter(sop_instance_uid=Study.objects.first().sop_instance_uid).count() == 2


def test_race_on_the_same_uid_returns_the_winner_and_removes_the_losers_files(hospital_a, stored, monkeypatch):
    """Both requests passed the existence check; the database constraint decides."""
    data = CR_CHEST.read_bytes()
    winner, _ = ingest_upload(hospital=hospital_a, data=data, source=Study.Source.API)
    before = stored()
    monkeypatch.setattr(services, "_existing", lambda hospital, decoded, typed, accession: None)
    study, created = ingest_upload(hospital=hospital_a, data=data, source=Study.Source.API)
    assert created is False
    assert study.pk == winner.pk
    after = stored()
    assert (after.studies, after.files) == (before.studies, before.files)


def test_storage_failure_midway_leaves_no_files_and_no_row(hospital_a, stored, monkeypatch):
    before = stored()

    def broken_insert(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(services, "insert_together", broken_insert)  # after the original was written
    with pytest.raises(OSError, match="disk full"):
        ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)
    after = stored()
    assert (after.studies, after.files) == (before.studies, before.files)


def test_a_stored_study_whose_commit_answer_was_lost_keeps_its_file(hospital_a, stored, monkeypatch):
    """The insert committed, then the connection dropped before its answer: the file was
    removed all the same, and the study failed as "missing file" (concurrency review)."""
    real_insert = services.insert_together

    def insert_then_lose_the_answer(*instances, **kwargs):
        real_insert(*instances, **kwargs)
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "insert_together", insert_then_lose_the_answer)
    with pytest.raises(OperationalError):
        ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)
    study = Study.objects.get()
    assert stored().files == {study.original_file.name}


def test_a_study_the_database_did_not_store_leaves_no_file(hospital_a, stored, monkeypatch):
    before = stored()

    def database_gone(*instances, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(services, "insert_together", database_gone)
    with pytest.raises(OperationalError):
        ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)
    after = stored()
    assert (after.studies, after.files) == (before.studies, before.files)


def test_the_picture_is_drawn_once_when_two_first_requests_race(hospital_a, stored):
    study, _ = ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)
    first_view, second_view = Study.objects.get(pk=study.pk), Study.objects.get(pk=study.pk)

    kept = display_image_of(first_view).name
    also = display_image_of(second_view).name  # saw no picture yet, drew one, lost the update

    assert also == kept
    assert re.fullmatch(rf"studies/{hospital_a.code}/{study.code}/display-[0-9a-f]{{12}}\.png", kept)
    assert stored().files == {study.original_file.name, kept}
    assert Study.objects.get(pk=study.pk).display_image.name == kept


def test_no_picture_is_drawn_from_an_unreadable_original(hospital_a, stored, caplog):
    study, _ = ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)
    study.original_file.storage.delete(study.original_file.name)

    assert not display_image_of(study)

    assert not Study.objects.get(pk=study.pk).display_image
    assert stored().files == frozenset()
    assert f"study {study.code}: no picture drawn, the original could not be read (FileNotFoundError)" in caplog.text


def test_the_studies_url_without_its_slash_stores_the_study_rather_than_redirecting(emr, stored):
    """A redirect would be followed as a GET (for 301 and 302), answered 200 with the list,
    and the EMR would take 200 for 'stored'."""
    response = emr.generic("POST", STUDIES_URL.rstrip("/"), DX_CHEST.read_bytes(), content_type="application/dicom")

    assert response.status_code == 202
    study = Study.objects.get()
    assert response.json()["id"] == str(study.code)
    assert emr.get(f"{STUDIES_URL}{study.code}").json()["id"] == str(study.code)
