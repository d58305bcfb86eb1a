"""evaluate_model's report and plots, Grad-CAM heatmaps, and ensure_default_model."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command
from PIL import Image

from mlcore import registry
from mlcore.engine import HEATMAP_MAX_SIDE
from mlcore.gradcam import colormap, forward_with_cam, heatmap_overlay_png, overlay_alpha
from mlcore.models import ModelVersion
from mlcore.network import build_network
from mlcore.preprocessing import load_grayscale_file, to_model_input
from tests.mlcore.helpers import SMALL_DATA, TINY_NAME

pytestmark = pytest.mark.django_db

REPORT_KEYS = {
    "images",
    "threshold",
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "roc_auc",
    "pr_auc",
    "ece",
    "confusion_matrix",
    "model_version",
}


@pytest.fixture
def active_tiny(weights_dir):
    call_command("ensure_default_model", stdout=io.StringIO())
    registry.engines.clear()
    yield ModelVersion.objects.get(name=TINY_NAME)
    registry.engines.clear()


def _evaluate(*args) -> dict:
    out = io.StringIO()
    call_command("evaluate_model", *args, "--device", "cpu", stdout=out)
    return json.loads(out.getvalue())


def test_evaluate_model_reports_every_metric_and_writes_three_plots(active_tiny, tmp_path):
    report = _evaluate(str(SMALL_DATA), "--out", str(tmp_path / "plots"))

    assert set(report) == REPORT_KEYS
    assert report["images"] == 16
    assert report["model_version"] == TINY_NAME
    assert report["threshold"] == round(active_tiny.threshold, 6)
    cm = report["confusion_matrix"]
    assert (cm["tp"] + cm["fn"], cm["tn"] + cm["fp"]) == (8, 8)
    assert report["accuracy"] == round((cm["tp"] + cm["tn"]) / 16, 4)
    assert report["sensitivity"] == round(cm["tp"] / 8, 4)
    assert report["specificity"] == round(cm["tn"] / 8, 4)
    assert 0 <= report["roc_auc"] <= 1 and 0 <= report["pr_auc"] <= 1 and 0 <= report["ece"] <= 1
    sizes = {"roc.png": (600, 600), "confusion_matrix.png": (540, 480), "calibration.png": (600, 600)}
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(sizes)
    for name, size in sizes.items():
        with Image.open(tmp_path / "plots" / name) as image:
            assert (image.format, image.size) == ("PNG", size)


def test_evaluating_the_validation_patients_reproduces_the_stored_auc(active_tiny, tiny_model, tmp_path):
    """Serving (decode, preprocess, forward, calibrate) ranks the images exactly as training measured."""
    manifest = json.loads((tiny_model / "split.json").read_text())
    for relative in manifest["val"]["files"]:
        (tmp_path / "val" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SMALL_DATA / relative, tmp_path / "val" / relative)

    report = _evaluate(str(tmp_path / "val"), "--model", TINY_NAME)

    assert report["images"] == manifest["val"]["images"]
    assert report["roc_auc"] == active_tiny.metrics["roc_auc"]
    assert report["confusion_matrix"] == active_tiny.metrics["confusion_matrix"]


def test_evaluating_the_images_sent_as_16_bit_counts_the_labels_that_changed(active_tiny):
    """A 16-bit upload is stretched to its own range, an 8-bit one is not: the report says
    what that does to the model's answers on the same pixels."""
    from mlcore.data import scan_folder
    from mlcore.evaluation import sent_as_16_bit

    report = _evaluate(str(SMALL_DATA), "--as-16-bit")

    _, engine = registry.get_active_engine("cpu")
    grays = [load_grayscale_file(sample.path) for sample in scan_folder(SMALL_DATA)]
    as_8_bit = engine.probabilities(engine.logits(grays))
    as_16_bit = engine.probabilities(engine.logits([sent_as_16_bit(gray) for gray in grays]))
    changed = int(np.sum((as_8_bit >= engine.spec.threshold) != (as_16_bit >= engine.spec.threshold)))
    assert set(report) == REPORT_KEYS | {"sent_as", "labels_changed_from_8_bit", "largest_probability_change"}
    assert (report["sent_as"], report["labels_changed_from_8_bit"]) == ("16-bit PNG", changed)
    assert report["largest_probability_change"] == round(float(np.max(np.abs(as_8_bit - as_16_bit))), 4)
    assert report["largest_probability_change"] > 0  # the stretch reaches the model


def test_an_image_sent_as_16_bit_comes_back_stretched_to_its_own_range():
    from mlcore.evaluation import sent_as_16_bit

    gray = np.array([[10, 90], [60, 210]], dtype=np.uint8)

    assert sent_as_16_bit(gray).tolist() == [[0, 102], [64, 255]]
    full_range = np.array([[0, 128], [64, 255]], dtype=np.uint8)
    assert sent_as_16_bit(full_range).tolist() == full_range.tolist()


def test_evaluate_model_refuses_a_folder_without_class_folders_and_unknown_models(active_tiny, tmp_path):
    with pytest.raises(CommandError, match="must contain NORMAL/ and PNEUMONIA/ folders"):
        call_command("evaluate_model", str(tmp_path))
    with pytest.raises(CommandError, match="no model version named 'nope'"):
        call_command("evaluate_model", str(SMALL_DATA), "--model", "nope")


def test_gradcam_heatmaps_match_each_image(active_tiny):
    _, engine = registry.get_active_engine("cpu")
    square = load_grayscale_file(sorted((SMALL_DATA / "PNEUMONIA").iterdir())[0])
    wide = np.ascontiguousarray(np.tile(square, (1, 2)))  # 224 x 448
    tall = np.ascontiguousarray(np.tile(square, (4, 1)))  # 896 x 224: bigger than the heatmap limit

    results = engine.predict([square, wide, tall])

    expected = [(224, 224), (224, 448), (HEATMAP_MAX_SIDE, 128)]
    assert [r.heatmap.shape for r in results] == expected
    for result, (height, width) in zip(results, expected, strict=True):
        assert result.heatmap.dtype == np.float32
        assert result.heatmap.min() >= 0.0
        assert result.heatmap.max() <= 1.0
        assert result.heatmap.max() in (0.0, pytest.approx(1.0, abs=0.02))
        with Image.open(io.BytesIO(result.heatmap_png)) as overlay:
            assert (overlay.format, overlay.mode, overlay.size) == ("PNG", "P", (width, height))
            assert "transparency" in overlay.info
        assert result.batch_size == 3
        assert result.model_version == TINY_NAME
        assert result.device == "cpu"
        assert result.label == ("pneumonia" if result.probability >= result.threshold else "normal")


def _gradcam_tracked_from_the_input(network, batch):
    """Grad-CAM as usually written: the whole forward pass records autograd's graph."""
    captured = {}
    hook = network.layer4.register_forward_hook(lambda _m, _i, output: captured.__setitem__("a", output))
    try:
        with torch.enable_grad():
            logits = network(batch.detach().requires_grad_(True)).reshape(-1)
            (gradients,) = torch.autograd.grad(logits.sum(), captured["a"])
    finally:
        hook.remove()
    cams = torch.relu((gradients.mean(dim=(2, 3), keepdim=True) * captured["a"]).sum(dim=1))
    return logits.detach(), (cams / cams.flatten(1).max(dim=1).values.clamp_min(1e-8)[:, None, None]).detach()


@pytest.mark.parametrize("architecture", ["resnet18", "resnet50"])
def test_gradcam_from_the_head_weights_gives_the_logits_and_maps_of_gradcam_from_gradients(architecture):
    torch.manual_seed(0)
    network = build_network(architecture).eval().requires_grad_(False)
    grays = [load_grayscale_file(path) for path in sorted(SMALL_DATA.glob("*/*.jpeg"))[:4]]
    batch = torch.stack([to_model_input(gray, 128) for gray in grays])

    logits, cams = forward_with_cam(network, batch)
    expected_logits, expected_cams = _gradcam_tracked_from_the_input(network, batch)

    assert cams.shape == expected_cams.shape == (4, 4, 4)
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    assert torch.allclose(cams, expected_cams, atol=1e-5)
    assert cams.flatten(1).max(dim=1).values.tolist() == pytest.approx([1.0] * 4)
    assert not cams.requires_grad and not logits.requires_grad


def test_gradcam_refuses_a_network_whose_head_is_not_one_linear_unit():
    network = build_network("resnet18").eval()
    network.fc = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(512, 1))

    with pytest.raises(TypeError, match="one linear unit after global average pooling"):
        forward_with_cam(network, torch.zeros(1, 1, 64, 64))


def test_heatmap_overlay_draws_the_colour_ramp_and_is_clear_where_the_network_did_not_look():
    cam = np.linspace(0.0, 1.0, 200 * 300, dtype=np.float32).reshape(200, 300)

    with Image.open(io.BytesIO(heatmap_overlay_png(cam))) as overlay:
        drawn = np.asarray(overlay.convert("RGBA")).astype(int)

    exact = np.dstack([colormap(cam), overlay_alpha(cam)]).astype(int)
    # 256 palette levels: at most 2 of 255 away from the exact ramp, in colour and opacity.
    assert np.abs(drawn - exact).max() <= 2
    assert drawn[cam < 0.14, 3].max() == 0
    assert drawn[-1, -1].tolist() == [230, 30, 20, 210]


def test_heatmap_does_not_change_the_prediction(active_tiny):
    _, engine = registry.get_active_engine("cpu")
    grays = [load_grayscale_file(path) for path in sorted(SMALL_DATA.glob("*/*.jpeg"))[:4]]
    with_cam = engine.predict(grays)
    without = engine.predict(grays, with_heatmap=False)
    assert [r.probability for r in with_cam] == pytest.approx([r.probability for r in without], abs=1e-6)
    assert all(r.heatmap is None and r.heatmap_png is None for r in without)
    assert engine.predict([]) == []


def test_ensure_default_model_registers_and_activates_once(weights_dir):
    first, second = io.StringIO(), io.StringIO()
    call_command("ensure_default_model", stdout=first)
    call_command("ensure_default_model", stdout=second)

    version = ModelVersion.objects.get()
    threshold = f"{version.threshold:.4f}"
    assert first.getvalue() == (
        f"registered {TINY_NAME}\nactivated {TINY_NAME}\nactive model: {TINY_NAME} (threshold {threshold})\n"
    )
    assert second.getvalue() == f"active model: {TINY_NAME} (threshold {threshold})\n"
    assert version.status == ModelVersion.Status.ACTIVE


def test_ensure_default_model_leaves_another_active_version_alone(weights_dir):
    call_command("register_model", str(weights_dir / TINY_NAME), "--name", "chosen", "--activate", stdout=io.StringIO())
    out = io.StringIO()
    call_command("ensure_default_model", stdout=out)
    assert out.getvalue().endswith(
        "active model: chosen (threshold " + f"{ModelVersion.objects.active().threshold:.4f})\n"
    )
    assert dict(ModelVersion.objects.values_list("name", "status")) == {"chosen": "active", TINY_NAME: "candidate"}


def test_ensure_default_model_copies_the_shipped_model_into_an_empty_models_volume(weights_dir, settings, tmp_path):
    """In containers MODEL_WEIGHTS_DIR is a shared volume; the image's model is copied in once."""
    settings.SHIPPED_MODELS_DIR = weights_dir
    settings.MODEL_WEIGHTS_DIR = tmp_path / "volume"
    first, second = io.StringIO(), io.StringIO()
    call_command("ensure_default_model", stdout=first)
    call_command("ensure_default_model", stdout=second)

    version = ModelVersion.objects.get()
    assert first.getvalue().splitlines()[:2] == [
        f"copied {TINY_NAME} into {tmp_path / 'volume'}",
        f"registered {TINY_NAME}",
    ]
    assert "copied" not in second.getvalue()
    assert sorted(p.name for p in (tmp_path / "volume").iterdir()) == [TINY_NAME]
    assert sorted(p.name for p in (tmp_path / "volume" / TINY_NAME).iterdir()) == sorted(
        p.name for p in (weights_dir / TINY_NAME).iterdir()
    )
    weights = registry.resolve_weights_path(version)
    assert weights == tmp_path / "volume" / TINY_NAME / "weights.pt"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == version.weights_sha256


def test_ensure_default_model_explains_missing_weights(settings, tmp_path):
    settings.MODEL_WEIGHTS_DIR = tmp_path
    settings.DEFAULT_MODEL_NAME = "absent"
    with pytest.raises(CommandError, match=r"model\.json not found"):
        call_command("ensure_default_model")
    assert ModelVersion.objects.count() == 0
