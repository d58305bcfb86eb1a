"""Training and serving must turn the same radiograph into the same tensor, bit for bit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mlcore import data, training
from mlcore.engine import InferenceEngine, ModelSpec
from mlcore.preprocessing import PIXEL_MEAN, PIXEL_STD, load_grayscale_file, to_model_input
from tests.mlcore.helpers import SMALL_DATA, TINY_IMAGE_SIZE


@pytest.fixture
def engine(tiny_model) -> InferenceEngine:
    import json

    description = json.loads((tiny_model / "model.json").read_text())
    spec = ModelSpec(
        name=description["name"],
        architecture=description["architecture"],
        image_size=description["image_size"],
        weights_path=tiny_model / "weights.pt",
        weights_sha256=description["weights_sha256"],
        threshold=description["threshold"],
    )
    return InferenceEngine(spec, device="cpu")


def test_training_and_serving_give_identical_tensors_for_the_same_files(engine):
    samples = data.scan_folder(SMALL_DATA)
    train_images, targets = training.load_tensors(samples, TINY_IMAGE_SIZE, progress=False)
    served = engine._batch([load_grayscale_file(s.path) for s in samples])

    assert train_images.shape == (16, 1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert served.dtype == train_images.dtype == torch.float32
    assert torch.equal(served, train_images)
    assert targets.tolist() == [0.0] * 8 + [1.0] * 8


def test_uploaded_bytes_png_and_a_decoded_array_all_reach_the_same_tensor(tmp_path):
    path = sorted((SMALL_DATA / "PNEUMONIA").iterdir())[0]
    from_path = to_model_input(load_grayscale_file(path), 96)
    from_bytes = to_model_input(load_grayscale_file(path.read_bytes()), 96)
    # A PNG holding the decoded pixels (lossless) must give the very same input.
    gray = load_grayscale_file(path)
    png = tmp_path / "same.png"
    Image.fromarray(gray, mode="L").save(png)
    from_png = to_model_input(load_grayscale_file(png), 96)
    # DICOM decoding hands over a uint8 array: the same array must give the same input.
    from_array = to_model_input(gray.copy(), 96)

    assert from_path.shape == (1, 96, 96)
    assert torch.equal(from_path, from_bytes)
    assert torch.equal(from_path, from_png)
    assert torch.equal(from_path, from_array)


def test_rgb_and_16_bit_images_become_8_bit_grayscale():
    rgb = Image.new("RGB", (5, 4), (120, 120, 120))
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    gray = load_grayscale_file(buffer.getvalue())
    assert gray.dtype == np.uint8
    assert gray.shape == (4, 5)
    assert set(np.unique(gray).tolist()) == {120}

    sixteen = np.array([[1000, 3000], [5000, 1000]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(sixteen).save(buffer, format="PNG")
    assert load_grayscale_file(buffer.getvalue()).tolist() == [[0, 128], [255, 0]]


def test_model_input_is_normalised_with_the_documented_mean_and_std():
    gray = np.full((10, 20), 255, dtype=np.uint8)
    tensor = to_model_input(gray, 8)
    assert tensor.shape == (1, 8, 8)
    assert torch.allclose(tensor, torch.full((1, 8, 8), (1.0 - PIXEL_MEAN) / PIXEL_STD))


def test_model_input_refuses_anything_but_a_2d_uint8_array():
    with pytest.raises(ValueError, match="expected a 2-D uint8 array"):
        to_model_input(np.zeros((4, 4, 3), dtype=np.uint8), 8)
    with pytest.raises(ValueError, match="expected a 2-D uint8 array"):
        to_model_input(np.zeros((4, 4), dtype=np.float32), 8)


def test_16_bit_stretch_through_a_table_gives_the_per_pixel_formula_exactly():
    values = np.random.default_rng(3).integers(200, 60_000, size=(64, 48), dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")

    low, high = float(values.min()), float(values.max())
    formula = np.clip(np.rint((values.astype(np.float64) - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(load_grayscale_file(buffer.getvalue()), formula)


def test_an_opaque_alpha_channel_reads_as_the_same_picture_without_it():
    rgb = np.random.default_rng(4).integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    opaque = np.dstack([rgb, np.full((16, 12), 255, dtype=np.uint8)])
    with_alpha, without = io.BytesIO(), io.BytesIO()
    Image.fromarray(opaque, "RGBA").save(with_alpha, format="PNG")
    Image.fromarray(rgb, "RGB").save(without, format="PNG")
    np.testing.assert_array_equal(load_grayscale_file(with_alpha.getvalue()), load_grayscale_file(without.getvalue()))
