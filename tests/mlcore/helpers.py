"""A tiny real model, trained once per test session, for every test that needs one.

Other test packages reuse it: `from tests.mlcore.helpers import tiny_model_dir`.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from django.core.management import call_command

from tests.conftest import FIXTURES

SMALL_DATA = FIXTURES / "chest_xray_small"
TINY_IMAGE_SIZE = 64
TINY_EPOCHS = 2
TINY_NAME = "pleura-tiny"

_cache: dict[str, Path] = {}


def train_tiny_model(out_dir: Path, *, name: str = TINY_NAME, seed: int = 3, data: Path = SMALL_DATA) -> Path:
    """A real `train_model` run on the 16 fixture radiographs (a few seconds on CPU)."""
    call_command(
        "train_model",
        "--data",
        str(data),
        "--out",
        str(out_dir),
        "--name",
        name,
        "--image-size",
        str(TINY_IMAGE_SIZE),
        "--epochs",
        str(TINY_EPOCHS),
        "--batch-size",
        "4",
        "--val-fraction",
        "0.3",
        "--seed",
        str(seed),
        "--no-progress",
        stdout=io.StringIO(),
    )
    return out_dir


def tiny_model_dir(tmp_path_factory) -> Path:
    """The output folder of the session's tiny training (trained on first use)."""
    if "dir" not in _cache or not (_cache["dir"] / "weights.pt").is_file():
        _cache["dir"] = train_tiny_model(tmp_path_factory.mktemp("tiny-model") / TINY_NAME)
    return _cache["dir"]


def copy_model_dir(source: Path, destination: Path, *, name: str | None = None) -> Path:
    """A copy of a trained model folder, optionally renamed in its model.json."""
    shutil.copytree(source, destination)
    if name is not None:
        description_path = destination / "model.json"
        description = json.loads(description_path.read_text())
        description["name"] = name
        description_path.write_text(json.dumps(description, indent=2))
    return destination


def compare_with_active(name: str, *, roc_auc_gain: float = 0.0) -> None:
    """Record what retraining records for the gate: the version `name` and the active one
    measured on one locked set (here, the validation metrics each was registered with,
    the candidate's ROC AUC raised by `roc_auc_gain`, with paired evidence putting half
    of its AUC lead beyond chance: a version of the same weights measures no better, and
    the gate refuses it)."""
    from mlcore.models import ModelVersion

    candidate, active = ModelVersion.objects.get(name=name), ModelVersion.objects.active()
    measured = {**candidate.metrics}
    if roc_auc_gain:
        measured["roc_auc"] = measured["roc_auc"] + roc_auc_gain
    no_lead = {"only_candidate_right": 0, "only_active_right": 0, "p_value": 1.0}
    auc_gain = measured["roc_auc"] - active.metrics["roc_auc"]
    comparison = {
        "candidate": measured,
        "active": active.metrics,
        "paired": {"pneumonia": no_lead, "normal": no_lead, "roc_auc_gain_lower_95": round(auc_gain / 2, 6)},
        "against": {"name": active.name, "code": str(active.code), "weights_sha256": active.weights_sha256},
    }
    candidate.metrics = {**candidate.metrics, "comparison": comparison}
    candidate.save(update_fields=["metrics"])
