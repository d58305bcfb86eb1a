"""Ingestion fixtures: real radiographs, pydicom's own test files, API callers, and a
snapshot of what is stored (database rows and files) to prove refusals change nothing."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from PIL import Image
from pydicom.data import get_testdata_file
from rest_framework.test import APIClient

from diagnostics import services
from diagnostics.models import Study
from hospital.api import IntegrationKeyThrottle
from hospital.models import AuditEvent
from tests.conftest import (
    FIXTURES,
    SHARED_DATA,
    at_once,
    delete_redis_cache_keys,
    stored_files,
    unreachable_media_root,
)

INGESTION_FIXTURES = FIXTURES / "ingestion"
NORMAL_JPEG = INGESTION_FIXTURES / "chest-normal.jpeg"
PNEUMONIA_JPEG = INGESTION_FIXTURES / "chest-pneumonia.jpeg"
PNEUMONIA_PNG = INGESTION_FIXTURES / "chest-pneumonia.png"
SHARED_DICOM = SHARED_DATA / "dicom"
CR_CHEST = SHARED_DICOM / "CR-MONO1-10-chest.dcm"
DX_CHEST = SHARED_DICOM / "nih-chestxray14-dx-no-finding.dcm"
TIBIA = SHARED_DICOM / "RG3-J2KR-tibia-cr.dcm"
STUDIES_URL = "/api/v1/studies/"


def pydicom_file(name: str) -> Path:
    """A test file shipped inside the pydicom wheel (never downloaded)."""
    path = Path(get_testdata_file(name, download=False) or "")
    assert path.is_file(), f"{name} is not shipped with pydicom"
    return path


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path) -> Path:
    """Each test stores files in its own folder, so stored files can be counted exactly."""
    root = tmp_path / "media"
    root.mkdir()
    settings.MEDIA_ROOT = root
    return root


@pytest.fixture(autouse=True)
def _fresh_throttle_cache():
    """No request is counted against any integration key when a test starts or after it."""
    _forget_throttle_history()
    yield
    _forget_throttle_history()


def _forget_throttle_history() -> None:
    cache = caches["default"]
    if not isinstance(cache, RedisCache):
        cache.clear()  # this process's own memory: nothing else is kept there
        return
    throttle_key = IntegrationKeyThrottle.cache_format % {"scope": IntegrationKeyThrottle.scope, "ident": "*"}
    delete_redis_cache_keys(cache, cache.make_key(throttle_key))  # the throttle's keys only


@pytest.fixture
def key_client():
    """An API client authenticated with an integration key: `key_client(raw_key)`."""

    def make(raw_key: str) -> APIClient:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        return client

    return make


@pytest.fixture
def emr(key_a, key_client) -> APIClient:
    """Hospital A's EMR: an API client with its integration key."""
    return key_client(key_a[1])


@pytest.fixture
def session_client():
    def make(user) -> APIClient:
        client = APIClient()
        client.force_login(user)
        return client

    return make


def post_file(client: APIClient, data: bytes, name: str = "upload.bin", **fields):
    upload = io.BytesIO(data)
    upload.name = name
    return client.post(STUDIES_URL, {"file": upload, **fields}, format="multipart")


def post_dicom_body(client: APIClient, data: bytes):
    return client.generic("POST", STUDIES_URL, data, content_type="application/dicom")


@dataclass(frozen=True)
class Snapshot:
    studies: int
    files: frozenset[str]
    uploaded_events: int


@pytest.fixture
def storage_down(settings, tmp_path, media_root):
    """`storage_down()` points the storage at a folder that cannot exist, as a full or
    unmounted disk refuses writes; `storage_down.up()` puts it back."""
    unreachable = unreachable_media_root(tmp_path)

    def down() -> None:
        settings.MEDIA_ROOT = unreachable

    def up() -> None:
        settings.MEDIA_ROOT = media_root

    down.up = up
    return down


@pytest.fixture
def stored(media_root):
    """`stored()` -> what is stored now: study rows, files under MEDIA_ROOT, upload events."""

    def snapshot() -> Snapshot:
        uploaded = AuditEvent.objects.filter(action="study.uploaded").count()
        return Snapshot(Study.objects.count(), stored_files(media_root), uploaded)

    return snapshot


def png_of(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def a_picture(rows: int = 64, columns: int = 64, dtype=np.uint8) -> np.ndarray:
    """Pixels with something in them (a diagonal ramp): uploads of one shade, or smaller
    than 32 pixels a side, are refused (imaging.check_content)."""
    ramp = np.add.outer(np.arange(rows), np.arange(columns)) * (np.iinfo(dtype).max // (rows + columns))
    return ramp.astype(dtype)


def make_dicom(
    pixels: np.ndarray | None,
    *,
    preamble: bool = True,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    **attributes,
) -> bytes:
    """A DICOM file built here (Secondary Capture, MONOCHROME2 unless told otherwise)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.PatientID = "MRN-0001"
    ds.PatientName = "Doe^Jane"
    if pixels is not None:
        samples = 3 if pixels.ndim == 3 else 1
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = samples
        ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
        if samples == 3:
            ds.PlanarConfiguration = 0
        bits = pixels.dtype.itemsize * 8
        ds.BitsAllocated = bits
        ds.BitsStored = bits
        ds.HighBit = bits - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    implicit = transfer_syntax == "1.2.840.10008.1.2"
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.save_as(buffer, enforce_file_format=True)
    else:
        # Old ACR-NEMA style: no preamble, no file meta, the data set straight away.
        ds.save_as(buffer, implicit_vr=implicit, little_endian=True)
    return buffer.getvalue()


def ingest_at_once(hospital, data: bytes, copies: int = 2) -> tuple[list, list[Exception]]:
    """`copies` uploads of `data`, each in a thread (a connection) of its own, started
    together: their results, (study, queued), and whatever they raised."""
    return at_once(lambda: services.ingest_upload(hospital=hospital, data=data, source=Study.Source.API), copies)
