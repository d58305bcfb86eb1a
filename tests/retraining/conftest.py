"""Learning-loop fixtures: a real tiny active model whose locked validation split lives in
the fixture radiographs, and studies ingested through the real upload service."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from diagnostics.models import Study
from diagnostics.reviews import save_review
from mlcore import registry
from mlcore.models import ModelVersion
from tests.conftest import SHARED_DATA
from tests.mlcore.helpers import SMALL_DATA, TINY_NAME, copy_model_dir, tiny_model_dir

# What the uploaded DICOM says about its patient: none of it may leave in an export.
PATIENT_NAME = "Quixote^Dulcinea"
PATIENT_ID = "MRN-93817265"
BIRTH_DATE = "19710423"
ACCESSION = "ACC-55190733"
DICOM_SOURCE = SHARED_DATA / "dicom" / "CR-MONO1-10-chest.dcm"


@pytest.fixture
def loop_settings(settings, tmp_path) -> Path:
    """Weights in a private folder; the base training data is the 16 fixture radiographs."""
    weights = tmp_path / "weights"
    weights.mkdir()
    settings.MODEL_WEIGHTS_DIR = weights
    settings.TRAINING_DATA_DIR = SMALL_DATA
    registry.engines.clear()
    yield weights
    registry.engines.clear()


@pytest.fixture
def active_model(db, loop_settings, tmp_path_factory) -> ModelVersion:
    """The session's tiny model (really trained on SMALL_DATA), registered and active."""
    folder = copy_model_dir(tiny_model_dir(tmp_path_factory), loop_settings / TINY_NAME)
    return registry.activate(registry.register_from_dir(folder))


def dicom_with_phi(*, patient_id: str = PATIENT_ID, name: str = PATIENT_NAME, accession: str = ACCESSION) -> bytes:
    """A real CR chest radiograph carrying identifiers, as a hospital's PACS would send it."""
    dataset = pydicom.dcmread(DICOM_SOURCE, force=True)
    dataset.PatientName = name
    dataset.PatientID = patient_id
    dataset.PatientBirthDate = BIRTH_DATE
    dataset.AccessionNumber = accession
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def ingest(hospital, data: bytes, user, **identifiers) -> Study:
    from diagnostics.services import ingest_upload

    study, _ = ingest_upload(
        hospital=hospital,
        data=data,
        source=Study.Source.PORTAL,
        user=user,
        patient_id=identifiers.get("patient_id", ""),
        accession_number=identifiers.get("accession_number", ""),
    )
    return study


def review(study: Study, radiologist, label: str, verdict: str = "disagree"):
    return save_review(study=study, radiologist=radiologist, verdict=verdict, correct_label=label)[0]


def fixture_image(class_name: str, index: int) -> bytes:
    return sorted((SMALL_DATA / class_name).iterdir())[index].read_bytes()


TRAIN = SHARED_DATA / "chest_xray" / "train"
# Real radiographs that are not among the base fixture images (so never in the locked set).
REVIEW_IMAGES = {
    "normal": [TRAIN / "NORMAL" / "IM-0115-0001.jpeg", TRAIN / "NORMAL" / "IM-0117-0001.jpeg"],
    "pneumonia": [
        TRAIN / "PNEUMONIA" / "person1000_bacteria_2931.jpeg",
        TRAIN / "PNEUMONIA" / "person1001_bacteria_2932.jpeg",
    ],
}


def other_radiographs(class_name: str, count: int) -> list[Path]:
    """`count` distinct real radiographs of the class, none among the base fixture images."""
    base = {path.name for path in (SMALL_DATA / class_name).iterdir()}
    return [path for path in sorted((TRAIN / class_name).iterdir()) if path.name not in base][:count]


def stored_study(hospital, image: Path, *, patient_id: str = PATIENT_ID, **fields) -> Study:
    """A completed study of a real JPEG radiograph, as ingestion and the pipeline leave it."""
    import hashlib
    from datetime import date

    from django.core.files.base import ContentFile

    data = image.read_bytes()
    study = Study(
        hospital=hospital,
        patient_id=patient_id,
        patient_name=fields.pop("patient_name", PATIENT_NAME.replace("^", " ")),
        patient_birth_date=date(1971, 4, 23),
        accession_number=fields.pop("accession_number", ACCESSION),
        source=Study.Source.PORTAL,
        original_format=Study.Format.JPEG,
        original_sha256=hashlib.sha256(data).hexdigest(),
        original_size=len(data),
        status=fields.pop("status", Study.Status.COMPLETED),
        **fields,
    )
    study.original_file.save("original.jpg", ContentFile(data), save=False)
    study.save()
    return study
