"""A short real training on real radiographs, through the management command."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
import torch
from django.core.management import CommandError, call_command

from mlcore.calibration import calibrated_probability
from mlcore.metrics import classification_report, threshold_for_sensitivity
from mlcore.network import file_sha256
from tests.mlcore.helpers import SMALL_DATA, TINY_EPOCHS, TINY_IMAGE_SIZE, TINY_NAME


def test_train_model_writes_every_artefact(tiny_model):
    assert sorted(p.name for p in tiny_model.iterdir()) == [
        "model.json",
        "model_card.json",
        "model_card.md",
        "split.json",
        "training.log",
        "val_predictions.npz",
        "weights.pt",
    ]
    description = json.loads((tiny_model / "model.json").read_text())
    # What reproduces it: the same weights need the same threads and workers too (ML review).
    assert (description["torch_threads"], description["data_loader_workers"]) == (torch.get_num_threads(), 0)
    first, *epochs = (tiny_model / "training.log").read_text().splitlines()
    ran_with = json.loads(first.removeprefix("# train_model "))
    assert (ran_with["seed"], ran_with["epochs"], ran_with["threads"]) == (3, TINY_EPOCHS, torch.get_num_threads())
    assert [line.split(" ", 2)[2].split(":")[0] for line in epochs[1 : 1 + TINY_EPOCHS]] == [
        f"epoch {n}" for n in range(1, TINY_EPOCHS + 1)
    ]
    assert description["name"] == TINY_NAME
    assert description["architecture"] == "resnet18"
    assert description["image_size"] == TINY_IMAGE_SIZE
    assert description["weights"] == "weights.pt"
    assert description["weights_sha256"] == file_sha256(tiny_model / "weights.pt")
    assert description["min_sensitivity"] == 0.95
    assert description["hyperparameters"]["range_stretch"] == 0.0  # as the shipped model was trained
    assert len(description["history"]) == TINY_EPOCHS
    assert description["best_epoch"] in (1, 2)
    assert description["temperature"] > 0
    training_data = description["training_data"]
    assert training_data["train_images"] + training_data["val_images"] == 16
    assert training_data["train_normal"] + training_data["val_normal"] == 8
    assert training_data["train_pneumonia"] + training_data["val_pneumonia"] == 8


def test_split_manifest_is_kept_with_the_model_and_disjoint_by_patient(tiny_model):
    manifest = json.loads((tiny_model / "split.json").read_text())
    assert manifest["unit"] == "patient"
    assert manifest["seed"] == 3
    train, val = set(manifest["train"]["files"]), set(manifest["val"]["files"])
    assert train.isdisjoint(val)
    on_disk = {f"{p.parent.name}/{p.name}" for p in SMALL_DATA.glob("*/*.jpeg")}
    assert train | val == on_disk
    assert manifest["val"]["normal"] >= 1
    assert manifest["val"]["pneumonia"] >= 1


def test_stored_threshold_meets_the_minimum_sensitivity_on_validation(tiny_model):
    description = json.loads((tiny_model / "model.json").read_text())
    stored = np.load(tiny_model / "val_predictions.npz")
    probabilities = calibrated_probability(stored["logits"], description["temperature"], description["logit_bias"])
    targets = stored["targets"]
    predicted = probabilities >= description["threshold"]
    sensitivity = predicted[targets == 1].mean()

    assert len(targets) == description["training_data"]["val_images"]
    assert sensitivity >= description["min_sensitivity"]
    # The metrics stored with the model are those of its own validation predictions.
    assert classification_report(targets, probabilities, description["threshold"]) == description["validation_metrics"]


def test_model_card_states_use_limits_data_and_metrics(tiny_model):
    card = json.loads((tiny_model / "model_card.json").read_text())
    description = json.loads((tiny_model / "model.json").read_text())
    assert card["validation_metrics"] == description["validation_metrics"]
    assert card["operating_point"] == {
        "threshold": description["threshold"],
        "chosen_for": "sensitivity >= 0.95 on validation",
    }
    assert card["weights_sha256"] == description["weights_sha256"]
    assert "pediatric" in " ".join(card["limitations"]).lower()
    assert "Trained from scratch (no ImageNet weights were available offline)." in card["limitations"]
    size = description["image_size"]  # the card said 224 for a model trained at 128 (test review)
    assert (
        f"Training images were {size} x {size} and squashed to a square; fine detail below that resolution is not used."
        in card["limitations"]
    )
    markdown = (tiny_model / "model_card.md").read_text()
    assert markdown.startswith(f"# Model card: {TINY_NAME}\n")
    assert "## Intended use" in markdown
    assert f"| roc_auc | {description['validation_metrics']['roc_auc']} |" in markdown


@pytest.mark.slow
def test_training_is_reproducible_with_a_seed(tmp_path):
    def run(out):
        call_command(
            "train_model",
            *("--data", str(SMALL_DATA), "--out", str(out), "--image-size", "32", "--epochs", "1"),
            *("--batch-size", "4", "--max-images", "4", "--val-fraction", "0.5", "--seed", "9", "--no-progress"),
            stdout=io.StringIO(),
        )
        return json.loads((out / "model.json").read_text())

    first, second = run(tmp_path / "a"), run(tmp_path / "b")
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["threshold"] == second["threshold"]
    assert (tmp_path / "a" / "split.json").read_text() == (tmp_path / "b" / "split.json").read_text()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--image-size", "16"], "--image-size at least 32"),
        (["--min-sensitivity", "1.5"], "--min-sensitivity must be in (0, 1]"),
        (["--range-stretch", "1.5"], "--range-stretch must be in [0, 1]"),
    ],
)
def test_train_model_refuses_bad_arguments(tmp_path, arguments, message):
    with pytest.raises(CommandError, match=re.escape(message)):
        call_command("train_model", "--data", str(SMALL_DATA), "--out", str(tmp_path / "out"), *arguments)
    assert not (tmp_path / "out").exists()


def test_train_model_refuses_a_folder_without_the_class_folders(tmp_path):
    (tmp_path / "NORMAL").mkdir()
    with pytest.raises(CommandError, match="PNEUMONIA is missing"):
        call_command("train_model", "--data", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress")


def test_the_threshold_lies_between_validation_scores_not_on_one():
    targets = np.array([0, 0, 1, 0, 1, 1])
    probabilities = np.array([0.10, 0.30, 0.50, 0.60, 0.70, 0.90])

    threshold = threshold_for_sensitivity(targets, probabilities, min_sensitivity=1.0)

    # The most specific corner with every pneumonia found is 0.50; the next lower score is 0.30.
    assert threshold == pytest.approx(0.40)
    assert list(probabilities >= threshold) == list(probabilities >= 0.50)


def test_the_threshold_stays_on_the_corner_when_no_float_lies_between_the_scores():
    # 0.7 and the float32 just under it: halfway between them rounds down to the lower one.
    corner = np.float32(0.7)
    below = np.nextafter(corner, np.float32(0))
    probabilities = np.array([0.1, below, corner, 0.95], dtype=np.float32)
    targets = np.array([0, 0, 1, 1])

    threshold = threshold_for_sensitivity(targets, probabilities, min_sensitivity=1.0)

    assert list(probabilities >= threshold) == [False, False, True, True]


def test_a_stretched_training_image_is_what_serving_makes_of_the_same_pixels_sent_deeper():
    """Deeper uploads reach the model stretched to their own range; the stretch in
    training must give the model the very input serving does (up to resizing's rounding)."""
    from mlcore.evaluation import sent_as_16_bit
    from mlcore.preprocessing import to_model_input
    from mlcore.training import RandomRangeStretch

    gray = np.linspace(40, 190, 64 * 64).reshape(64, 64).astype(np.uint8)

    stretched = RandomRangeStretch(p=1.0)(to_model_input(gray, 64))

    served = to_model_input(sent_as_16_bit(gray), 64)
    assert torch.allclose(stretched, served, atol=2 / 255 / 0.25)
    assert (float(stretched.min()), float(stretched.max())) == (-2.0, 2.0)
    assert torch.equal(RandomRangeStretch(p=0.0)(to_model_input(gray, 64)), to_model_input(gray, 64))
    flat = to_model_input(np.full((8, 8), 90, dtype=np.uint8), 8)
    assert torch.equal(RandomRangeStretch(p=1.0)(flat), flat)


@pytest.mark.parametrize("steps", range(1, 41))
def test_the_learning_rate_schedule_runs_through_any_number_of_steps(steps):
    """At 5 steps torch's warm-up ended at step 0 and its first step divided by zero
    (`train_model --max-images 100`, fresh-machine review)."""
    from mlcore.training import one_cycle

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    schedule = one_cycle(optimizer, 1e-3, epochs=1, steps_per_epoch=steps)
    for _ in range(steps):
        optimizer.step()
        schedule.step()
    assert 0 < optimizer.param_groups[0]["lr"] <= 1e-3
