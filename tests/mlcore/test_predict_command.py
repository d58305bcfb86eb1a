"""`manage.py predict`: PNG, JPEG and DICOM decoded as uploads are, one line per file."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from diagnostics.imaging import WARNINGS, decode_upload
from mlcore import registry
from mlcore.preprocessing import load_grayscale_file
from tests.conftest import SHARED_DATA
from tests.mlcore.helpers import SMALL_DATA, TINY_NAME

pytestmark = pytest.mark.django_db

JPEG = SMALL_DATA / "PNEUMONIA" / "person299_bacteria_1414.jpeg"
DICOM_CHEST = SHARED_DATA / "dicom" / "CR-MONO1-10-chest.dcm"
DICOM_TIBIA = SHARED_DATA / "dicom" / "RG3-J2KR-tibia-cr.dcm"


@pytest.fixture
def active_tiny(weights_dir):
    call_command("ensure_default_model", stdout=io.StringIO())
    registry.engines.clear()
    yield
    registry.engines.clear()


@pytest.fixture
def png(tmp_path):
    path = tmp_path / "normal.png"
    Image.fromarray(load_grayscale_file(SMALL_DATA / "NORMAL" / "IM-0237-0001.jpeg")).save(path)
    return path


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image at all")
    return path


def _predict(*args) -> tuple[list[dict], str, CommandError | None]:
    out, err = io.StringIO(), io.StringIO()
    error = None
    try:
        call_command("predict", *map(str, args), "--device", "cpu", stdout=out, stderr=err)
    except CommandError as exc:
        error = exc
    lines = out.getvalue().splitlines()
    return lines, err.getvalue(), error


def _expected_probability(path) -> float:
    _, engine = registry.get_active_engine("cpu")
    return engine.predict([decode_upload(path.read_bytes()).gray], with_heatmap=False)[0].probability


def test_json_lines_for_png_jpeg_and_dicom(active_tiny, png):
    lines, err, error = _predict("--json", JPEG, png, DICOM_CHEST)

    assert error is None
    assert err == ""
    rows = [json.loads(line) for line in lines]
    assert [row["file"] for row in rows] == [str(JPEG), str(png), str(DICOM_CHEST)]
    threshold = registry.get_active_engine("cpu")[0].threshold
    for row, path in zip(rows, (JPEG, png, DICOM_CHEST), strict=True):
        assert set(row) == {"file", "label", "probability", "threshold", "model_version"}
        assert row["model_version"] == TINY_NAME
        assert row["threshold"] == round(threshold, 6)
        assert row["probability"] == pytest.approx(_expected_probability(path), abs=1e-5)
        assert row["label"] == ("pneumonia" if row["probability"] >= threshold else "normal")


def test_a_bad_file_gets_an_error_line_and_the_others_still_run(active_tiny, bad_file, tmp_path):
    missing = tmp_path / "missing.jpeg"
    lines, _, error = _predict("--json", bad_file, JPEG, missing)

    rows = [json.loads(line) for line in lines]
    assert rows[0] == {
        "file": str(bad_file),
        "error": "This file is plain text; send a PNG, JPEG or DICOM radiograph.",
    }
    assert set(rows[1]) == {"file", "label", "probability", "threshold", "model_version"}
    assert rows[1]["file"] == str(JPEG)
    assert rows[2] == {"file": str(missing), "error": "No such file."}
    assert str(error) == "2 of 3 files could not be predicted"
    assert error.returncode == 2


def test_plain_output_names_the_label_and_errors_go_to_stderr(active_tiny, bad_file):
    lines, err, error = _predict(JPEG, bad_file)
    [line] = lines
    assert line.startswith(f"{JPEG}: ")
    assert f"model {TINY_NAME})" in line
    assert (" pneumonia (" in line) != (" normal (" in line)
    assert err == f"{bad_file}: error: This file is plain text; send a PNG, JPEG or DICOM radiograph.\n"
    assert str(error) == "1 of 2 files could not be predicted"


def test_a_dicom_outside_intended_use_is_predicted_with_its_warning(active_tiny):
    lines, _, error = _predict("--json", DICOM_TIBIA)
    [row] = [json.loads(line) for line in lines]
    assert error is None
    codes = decode_upload(DICOM_TIBIA.read_bytes()).warnings
    assert row["warnings"] == codes
    assert "not_chest" in codes

    lines, _, error = _predict(DICOM_TIBIA)
    assert error is None
    assert lines[1:] == [f"  warning: {WARNINGS[code]}" for code in codes]


def test_heatmap_dir_gets_an_overlay_per_file(active_tiny, png, tmp_path):
    heatmaps = tmp_path / "heatmaps"
    lines, _, error = _predict("--json", "--heatmap-dir", heatmaps, JPEG, png, DICOM_CHEST)

    assert error is None
    rows = [json.loads(line) for line in lines]
    assert [row["heatmap"] for row in rows] == [
        str(heatmaps / "person299_bacteria_1414.heatmap.png"),
        str(heatmaps / "normal.heatmap.png"),
        str(heatmaps / "CR-MONO1-10-chest.heatmap.png"),
    ]
    for row, size in zip(rows, [(224, 224), (224, 224), (440, 440)], strict=True):
        with Image.open(row["heatmap"]) as overlay:
            assert (overlay.format, overlay.mode, overlay.size) == ("PNG", "RGB", size)


def test_predict_with_a_named_model_and_without_any(weights_dir, active_tiny):
    call_command("register_model", str(weights_dir / TINY_NAME), "--name", "other", stdout=io.StringIO())
    lines, _, error = _predict("--json", "--model", "other", JPEG)
    assert error is None
    assert json.loads(lines[0])["model_version"] == "other"
    _, _, error = _predict("--model", "ghost", JPEG)
    assert str(error) == "no model version named 'ghost'"


def test_predict_without_an_active_model_says_what_to_do(weights_dir):
    _, _, error = _predict(JPEG)
    assert "no active model version" in str(error)


def test_uploads_decode_the_training_images_to_the_same_pixels():
    """The CLI and uploads decode with diagnostics.imaging; training with mlcore.preprocessing."""
    for path in sorted(SMALL_DATA.glob("*/*.jpeg")):
        assert (decode_upload(path.read_bytes()).gray == load_grayscale_file(path)).all(), path.name
