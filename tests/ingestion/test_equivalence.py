"""The same radiograph sent as DICOM and as the equivalent PNG gives the same grayscale,
the same model input and the same prediction (issue 4: "prove it with a test")."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diagnostics.imaging import decode_upload, load_grayscale
from diagnostics.models import Study
from diagnostics.services import ingest_upload
from mlcore.engine import InferenceEngine, ModelSpec
from mlcore.network import build_network, save_weights
from mlcore.preprocessing import to_model_input
from tests.ingestion.conftest import CR_CHEST, DX_CHEST, PNEUMONIA_PNG, TIBIA, make_dicom, png_of


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> InferenceEngine:
    """The real architecture with fixed random weights: equal inputs must give equal outputs."""
    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("weights") / "equivalence.pt"
    sha256 = save_weights(build_network("resnet18"), path)
    spec = ModelSpec(name="equivalence", architecture="resnet18", image_size=224, weights_path=path,
                     weights_sha256=sha256, threshold=0.5)  # fmt: skip
    return InferenceEngine(spec, device="cpu")


def assert_same_for_the_model(first: Study, second: Study, engine: InferenceEngine) -> None:
    gray_a, gray_b = load_grayscale(first), load_grayscale(second)
    np.testing.assert_array_equal(gray_a, gray_b)
    assert first.pixel_sha256 == second.pixel_sha256
    assert torch.equal(to_model_input(gray_a, 224), to_model_input(gray_b, 224))
    # One call each, as the worker would run them: positions in one batch may differ in the
    # last float bit on CPU, which says nothing about the images.
    (result_a,), (result_b,) = engine.predict([gray_a]), engine.predict([gray_b])
    assert result_a.probability == result_b.probability
    assert result_a.label == result_b.label
    np.testing.assert_array_equal(result_a.heatmap, result_b.heatmap)


@pytest.mark.parametrize("dicom", [CR_CHEST, DX_CHEST, TIBIA])
def test_dicom_and_the_png_exported_from_it_get_the_same_prediction(dicom, hospital_a, engine):
    """Windowed, inverted (MONOCHROME1) and JPEG 2000 radiographs, exported as 8-bit PNG."""
    exported_png = png_of(decode_upload(dicom.read_bytes()).gray)
    as_dicom, _ = ingest_upload(hospital=hospital_a, data=dicom.read_bytes(), source=Study.Source.API)
    as_png, _ = ingest_upload(hospital=hospital_a, data=exported_png, source=Study.Source.PORTAL)
    assert (as_dicom.original_format, as_png.original_format) == ("dcm", "png")
    assert_same_for_the_model(as_dicom, as_png, engine)


def test_png_chest_xray_wrapped_in_dicom_gets_the_same_prediction(hospital_a, engine):
    """The reverse direction: a real PNG radiograph sent as an 8-bit DICOM Secondary Capture."""
    gray = decode_upload(PNEUMONIA_PNG.read_bytes()).gray
    wrapped = make_dicom(gray, Modality="CR", BodyPartExamined="CHEST")
    as_png, _ = ingest_upload(hospital=hospital_a, data=PNEUMONIA_PNG.read_bytes(), source=Study.Source.PORTAL)
    as_dicom, _ = ingest_upload(hospital=hospital_a, data=wrapped, source=Study.Source.API)
    assert as_dicom.warnings == []
    assert_same_for_the_model(as_png, as_dicom, engine)


def test_a_naive_rendering_of_the_same_dicom_is_not_taken_for_it(hospital_a):
    """A different image must not look equal: the raw 10-bit values are not what the model sees."""
    import pydicom

    raw = pydicom.dcmread(CR_CHEST, force=True)
    raw.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    naive = png_of((raw.pixel_array >> 2).astype(np.uint8))
    as_dicom, _ = ingest_upload(hospital=hospital_a, data=CR_CHEST.read_bytes(), source=Study.Source.API)
    as_naive, _ = ingest_upload(hospital=hospital_a, data=naive, source=Study.Source.API)
    assert as_dicom.pixel_sha256 != as_naive.pixel_sha256
