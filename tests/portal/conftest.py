"""Portal fixtures: studies built from real radiographs (tests/fixtures/portal), with
their display image, a registered model version and predictions with a heatmap."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.utils import timezone
from PIL import Image

from diagnostics.models import Prediction, Study
from mlcore.models import ModelVersion
from tests.conftest import FIXTURES

PORTAL_FIXTURES = FIXTURES / "portal"
PNEUMONIA_JPEG = PORTAL_FIXTURES / "chest-pneumonia.jpeg"
NORMAL_JPEG = PORTAL_FIXTURES / "chest-normal.jpeg"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def heatmap_png(size: tuple[int, int]) -> bytes:
    """A transparent RGBA overlay the size of the display image (warm blob, right lung)."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    blob = np.exp(-(((xx - 0.68 * width) / (0.16 * width)) ** 2 + ((yy - 0.55 * height) / (0.2 * height)) ** 2))
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 0] = 230
    rgba[..., 1] = (180 * (1 - blob)).astype(np.uint8)
    rgba[..., 3] = (200 * blob).astype(np.uint8)
    return png_bytes(Image.fromarray(rgba, mode="RGBA"))


@pytest.fixture
def model_version(db) -> ModelVersion:
    return ModelVersion.objects.create(
        name="pleura-resnet18-test",
        architecture="resnet18-gray",
        image_size=224,
        weights_path="test.pt",
        weights_sha256="0" * 64,
        threshold=0.42,
        status=ModelVersion.Status.ACTIVE,
    )


@pytest.fixture
def make_study(db, model_version):
    """`make_study(hospital, status=..., label=..., probability=..., **fields)`.

    A study of a real radiograph; with a `label` it also gets a (non-shadow) prediction
    of the active test model, with a heatmap the size of the display image.
    """
    counter = {"n": 0}

    def make(
        hospital, *, status=Study.Status.COMPLETED, label=None, probability=0.9, source_jpeg=PNEUMONIA_JPEG, **fields
    ):
        counter["n"] += 1
        raw = source_jpeg.read_bytes()
        gray = Image.open(io.BytesIO(raw)).convert("L")
        now = timezone.now()
        defaults = {
            "patient_id": f"MRN-{counter['n']:04d}",
            "patient_name": f"Patient {counter['n']}",
            "accession_number": f"ACC-{counter['n']:04d}",
            "source": Study.Source.PORTAL,
            "original_format": Study.Format.JPEG,
            "original_sha256": hashlib.sha256(raw).hexdigest(),
            "original_size": len(raw),
            "rows": gray.height,
            "columns": gray.width,
            "queued_at": now,
        }
        defaults.update(fields)
        study = Study(hospital=hospital, status=status, **defaults)
        study.original_file.save("original.jpg", ContentFile(raw), save=False)
        study.save()  # the picture is drawn on the first request for it, as after an upload
        if label is not None:
            add_prediction(study, model_version, label=label, probability=probability)
        return study

    return make


def add_prediction(study: Study, version: ModelVersion, *, label: str, probability: float, is_shadow=False):
    prediction = Prediction(
        study=study,
        model_version=version,
        probability=probability,
        label=label,
        threshold=version.threshold,
        device="cpu",
        latency_ms=12.5,
        is_shadow=is_shadow,
    )
    size = (study.columns or 224, study.rows or 224)
    prediction.heatmap.save("heatmap.png", ContentFile(heatmap_png(size)), save=False)
    prediction.save()
    Study.objects.filter(pk=study.pk).update(completed_at=timezone.now() + timedelta(seconds=1))
    return prediction
