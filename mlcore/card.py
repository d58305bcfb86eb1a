"""The model card: what a model is, what it was trained on, how well it measured, and its limits."""

from __future__ import annotations

import json
from pathlib import Path

INTENDED_USE = (
    "Decision support for detecting pneumonia on frontal chest radiographs (CR/DX) of children aged "
    "1 to 5 years, as in the training data. A radiologist reviews every result; the model does not diagnose."
)
LIMITATIONS = [
    "Trained only on pediatric (1-5 years) anterior-posterior chest radiographs from one centre in "
    "Guangzhou (Kermany et al., 2018); adult, lateral or portable ICU images are outside its intended use.",
    "Does not distinguish bacterial from viral pneumonia, and detects no other finding.",
    "Training images were {size} x {size} and squashed to a square; fine detail below that resolution is not used.",
    "Validation figures come from held-out patients of the same source; performance on other hospitals' "
    "equipment and populations must be checked with radiologist reviews before relying on it.",
]
FROM_SCRATCH = "Trained from scratch (no ImageNet weights were available offline)."


def build_card(description: dict) -> dict:
    metrics = description["validation_metrics"]
    # The input size is the model's own: the card said 224 for a model trained at 128 (test review).
    limitations = [item.format(size=description["image_size"]) for item in LIMITATIONS]
    return {
        "name": description["name"],
        "architecture": description["architecture"],
        "input": f"{description['image_size']} x {description['image_size']} grayscale, squashed, normalised",
        "intended_use": INTENDED_USE,
        # A fine-tune starts from its parent's weights (learning-loop review: its card said
        # "trained from scratch").
        "limitations": limitations
        if description["hyperparameters"].get("init_weights")
        else [*limitations, FROM_SCRATCH],
        "training_data": description["training_data"],
        "split": "by patient (file-name prefixes, duplicate files kept together), stratified, seeded; see split.json",
        "hyperparameters": description["hyperparameters"],
        "operating_point": {
            "threshold": description["threshold"],
            "chosen_for": f"sensitivity >= {description['min_sensitivity']} on validation",
        },
        # A fine-tune's metrics, threshold and calibration come from its parent's locked
        # validation set (mlcore.retraining.fit_operating_point), not its own split.
        "validation_set": description.get("operating_point_fitted_on", "held-out patients"),
        "calibration": {"temperature": description["temperature"], "logit_bias": description["logit_bias"]},
        "validation_metrics": metrics,
        "best_epoch": description["best_epoch"],
        "history": description["history"],
        "weights_sha256": description["weights_sha256"],
        "device": description["device"],
        "training_seconds": description["training_seconds"],
        "dataset_credit": "Kermany et al., Cell 2018; Mendeley Data doi:10.17632/rscbjbr9sj.2 (CC BY 4.0)",
    }


def render_markdown(card: dict) -> str:
    m = card["validation_metrics"]
    cm = m["confusion_matrix"]
    td = card["training_data"]
    lines = [
        f"# Model card: {card['name']}",
        "",
        f"**Architecture:** {card['architecture']} (single logit), input {card['input']}.",
        "",
        "## Intended use",
        card["intended_use"],
        "",
        "## Limitations",
        *[f"- {item}" for item in card["limitations"]],
        "",
        "## Training data",
        f"- {td['train_images']} training images ({td['train_patients']} patients: {td['train_normal']} normal, "
        f"{td['train_pneumonia']} pneumonia); {td['val_images']} validation images ({td['val_patients']} patients: "
        f"{td['val_normal']} normal, {td['val_pneumonia']} pneumonia).",
        f"- Split: {card['split']}.",
        f"- Data sha256: `{td['data_sha256']}`.",
        f"- Credit: {card['dataset_credit']}.",
        "",
        f"## Validation metrics ({card.get('validation_set', 'held-out patients')})",
        "| metric | value |",
        "|---|---|",
        *[
            f"| {key} | {m[key]} |"
            for key in (
                "images",
                "roc_auc",
                "pr_auc",
                "accuracy",
                "sensitivity",
                "specificity",
                "precision",
                "f1",
                "ece",
            )
        ],
        f"| confusion (tn/fp/fn/tp) | {cm['tn']}/{cm['fp']}/{cm['fn']}/{cm['tp']} |",
        "",
        "## Operating point and calibration",
        f"- Threshold {card['operating_point']['threshold']:.4f}, chosen for {card['operating_point']['chosen_for']}.",
        f"- Probability = sigmoid(logit / {card['calibration']['temperature']:.4f} + "
        f"{card['calibration']['logit_bias']:.4f}), fitted on validation "
        f"({card.get('validation_set', 'held-out patients')}).",
        "",
        "## Training",
        f"- Best epoch {card['best_epoch']} of {len(card['history'])}, {card['training_seconds']:.0f} s on "
        f"{card['device']}.",
        f"- Hyperparameters: `{json.dumps(card['hyperparameters'])}`.",
        f"- Weights sha256: `{card['weights_sha256']}`.",
        "",
    ]
    return "\n".join(lines)


def write_card(description: dict, out_dir: Path) -> None:
    card = build_card(description)
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2))
    (out_dir / "model_card.md").write_text(render_markdown(card))
