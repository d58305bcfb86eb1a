"""Fine-tuning the active model on the base data plus radiologists' reviews, and the
like-for-like comparison the promotion gate reads.

The locked validation set is the `val` part of the active model's split.json, read
from the base training folder. It never enters a fine-tune (neither its files, nor
byte-identical copies of them, nor a reviewed study with its pixels), and the
candidate's split.json carries the same `val` part forward, so every generation of
models is measured on the same images.

The first half is plain Python (paths, samples, engines); `retrain()` is the Django
side: it registers the candidate with its lineage, stores the comparison and audits.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from hospital import audit
from mlcore import data, registry
from mlcore.card import build_card, render_markdown
from mlcore.engine import InferenceEngine, ModelSpec
from mlcore.evaluation import folder_logits
from mlcore.metrics import classification_report, operating_point, paired_evidence
from mlcore.models import ModelVersion
from mlcore.preprocessing import load_grayscale_file, pixel_sha256
from mlcore.promotion import gate_failures
from mlcore.training import TrainConfig, train

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
FINE_TUNE_SPLIT_FILE = "fine_tune_split.json"
# Fine-tuning defaults: a few epochs at a lower learning rate than training from scratch
# (2e-3), so the reviewed examples adjust the model instead of overwriting it.
DEFAULT_EPOCHS = 3
DEFAULT_LEARNING_RATE = 5e-4


class RetrainingError(Exception):
    """A retraining that cannot run, with a message for the operator."""


# --- Plain Python: data and comparison ------------------------------------------------


def locked_validation(split_path: Path, data_dir: Path) -> list[data.Sample]:
    """The images of the locked validation set, from the base training folder."""
    if not split_path.is_file():
        raise RetrainingError(f"{split_path} is missing: the active model has no locked validation split")
    wanted = set(json.loads(split_path.read_text())["val"]["files"])
    samples = [s for s in data.scan_folder(data_dir) if s.relative_name in wanted]
    missing = wanted - {s.relative_name for s in samples}
    if missing:
        raise RetrainingError(f"{len(missing)} locked validation images are missing from {data_dir}")
    return samples


def base_training_folder(data_dir: Path, locked: list[data.Sample], dest: Path) -> list[data.Sample]:
    """Link every base image except the locked validation ones (and byte-identical copies) into dest."""
    locked_names = {s.relative_name for s in locked}
    locked_hashes = {s.sha256 for s in locked}
    kept = [
        s for s in data.scan_folder(data_dir) if s.relative_name not in locked_names and s.sha256 not in locked_hashes
    ]
    for class_name in data.CLASSES:
        (dest / class_name).mkdir(parents=True, exist_ok=True)
    for sample in kept:
        (dest / sample.relative_name).symlink_to(sample.path.resolve())
    return kept


def review_training_folder(export_dir: Path, locked: list[data.Sample], dest: Path) -> tuple[list[data.Sample], int]:
    """Link the exported reviews into dest, except those showing a locked validation image;
    (reviews kept, number left out).

    A locked image uploaded as a study and reviewed comes back re-encoded as the export's
    PNG, so no file hash matches it: it is recognised by its grey pixels. Trained on, it
    would flatter the candidate on the very set the gate compares it on.
    """
    reviews = data.scan_review_export(export_dir)
    for class_name in data.CLASSES:
        (dest / class_name).mkdir(parents=True, exist_ok=True)
    if not reviews:
        return [], 0
    locked_pixels = {_pixels(sample) for sample in locked}
    kept = [sample for sample in reviews if _pixels(sample) not in locked_pixels]
    for sample in kept:
        (dest / sample.relative_name).symlink_to(sample.path.resolve())
    return kept, len(reviews) - len(kept)


# Pixel hashes by file hash: the same bytes show the same pixels. A retraining hashed each
# review's pixels twice (against the locked set, then for its lineage), and a training
# worker decoded the 4,000-odd base images anew at each retraining.
_PIXELS_OF_FILE: dict[str, str] = {}


def _pixels(sample: data.Sample) -> str:
    pixels = _PIXELS_OF_FILE.get(sample.sha256)
    if pixels is None:
        pixels = _PIXELS_OF_FILE[sample.sha256] = pixel_sha256(load_grayscale_file(sample.path))
    return pixels


def evaluate_samples(engine: InferenceEngine, samples: list[data.Sample]) -> dict | None:
    """The engine's metrics on these images at its own threshold (None without images)."""
    if not samples:
        return None
    targets = [s.target for s in samples]
    return classification_report(targets, _scores(engine, samples), engine.spec.threshold)


def _scores(engine: InferenceEngine, samples: list[data.Sample]) -> np.ndarray:
    """The engine's calibrated probabilities of pneumonia for these images, in order."""
    return engine.probabilities(folder_logits(engine, samples))


def fit_operating_point(out_dir: Path, description: dict, locked: list[data.Sample], device: str | None) -> dict:
    """Calibrate the fine-tuned model and choose its threshold on the locked validation set,
    where the active model's were fitted; rewrite its model.json and val_predictions.npz.

    `train()` fits them on its own validation split, which in a fine-tune is carved from
    the parent's training images: the model knows them, scores them near perfectly, and
    the fit came out absurd (temperature 0.17, bias 18.7, threshold 0.52, "validation"
    AUC 1.0 in the reviewer's probe), so the gate refused even a candidate identical to
    its parent. On the locked set both versions' operating points are fitted on the same
    images the gate then compares them on.
    """
    engine = InferenceEngine(ModelSpec.from_description(out_dir, description), device=device)
    logits = folder_logits(engine, locked)
    targets = np.array([sample.target for sample in locked])
    point = operating_point(logits, targets, description["min_sensitivity"])
    fitted = {
        **description,
        "threshold": point.threshold,
        "temperature": point.temperature,
        "logit_bias": point.bias,
        "validation_metrics": point.metrics,
        "operating_point_fitted_on": f"the locked validation set ({len(locked)} images), as the parent's",
    }
    (out_dir / "model.json").write_text(json.dumps(fitted, indent=2))
    np.savez_compressed(out_dir / "val_predictions.npz", logits=logits, targets=targets)
    return fitted


def compare(candidate: InferenceEngine, active: InferenceEngine, locked: list, holdout: list) -> dict:
    """Both models on the same locked validation set, and on the held-back reviewed cases,
    each with the paired evidence of whether the candidate's lead is more than chance."""
    return {
        **_both_on(candidate, active, locked),
        "reviewed_holdout": {"images": len(holdout), **_both_on(candidate, active, holdout)},
        "locked_validation_images": len(locked),
        "locked_validation_sha256": data.data_hash(locked),
    }


def _both_on(candidate: InferenceEngine, active: InferenceEngine, samples: list[data.Sample]) -> dict:
    if not samples:
        return {"candidate": None, "active": None}
    targets = np.array([sample.target for sample in samples])
    new_scores, old_scores = _scores(candidate, samples), _scores(active, samples)
    new_threshold, old_threshold = candidate.spec.threshold, active.spec.threshold
    return {
        "candidate": classification_report(targets, new_scores, new_threshold),
        "active": classification_report(targets, old_scores, old_threshold),
        "paired": paired_evidence(targets, new_scores, new_threshold, old_scores, old_threshold),
    }


# --- The Django side ------------------------------------------------------------------


def locked_validation_of(version: ModelVersion) -> list[data.Sample]:
    """The version's locked validation set: its split's validation images, from the base data."""
    split = registry.resolve_weights_path(version).parent / SPLIT_FILE
    return locked_validation(split, Path(settings.TRAINING_DATA_DIR))


def compare_with(
    candidate: InferenceEngine, against: ModelVersion, locked: list, holdout: list, device: str | None
) -> dict:
    """`compare`, of the `candidate` engine and the registered `against`, naming the
    version it was measured against: the gate accepts it only against that one."""
    comparison = compare(candidate, registry.get_engine(against, device=device), locked, holdout)
    comparison["against"] = {
        "name": against.name,
        "code": str(against.code),
        "weights_sha256": against.weights_sha256,
    }
    return comparison


def trained_on_locked_images(model_dir: Path, locked: list[data.Sample]) -> int:
    """How many of the locked validation images the model in `model_dir` trained on, by its
    split.json: measured on those, it is judged on images it learned (ML review: a model
    trained with another seed or validation fraction had 642 of the 786 in its training
    set, and compare_model scored it there). RetrainingError without a split.json."""
    split = Path(model_dir) / SPLIT_FILE
    if not split.is_file():
        raise RetrainingError(f"{split} is missing: what the model trained on is unknown, so it cannot be compared")
    trained = set(json.loads(split.read_text())["train"]["files"])
    return len(trained & {sample.relative_name for sample in locked})


@transaction.atomic
def compare_registered(
    candidate: ModelVersion, against: ModelVersion, *, device: str | None = None, actor=None
) -> dict:
    """Measure the registered `candidate` and `against` on the latter's locked validation
    set, each at its own threshold, and store it as the candidate's comparison, which the
    promotion gate reads. A model trained anew rather than fine-tuned (a new shipped
    default) gets its comparison here; `retrain_model` makes it for its candidates.

    Pleura measures it: a comparison.json beside the weights was stored as it was, so one
    edited by hand promoted weights the gate had refused (ML review)."""
    if candidate.pk == against.pk:
        raise RetrainingError(f"{candidate.name} cannot be compared with itself")
    if (candidate.training_data or {}).get("lineage"):
        # Its comparison holds the reviewed hold-out, which only retraining has: measured
        # again here on the locked set alone, a candidate refused on reviewed cases became
        # promotable without an override (diff review).
        raise RetrainingError(
            f"{candidate.name} was retrained from reviews and compared then, on the reviewed hold-out too: "
            f"retrain from the active version to compare again"
        )
    locked = locked_validation_of(against)
    overlap = trained_on_locked_images(registry.resolve_weights_path(candidate).parent, locked)
    if overlap:
        raise RetrainingError(
            f"{candidate.name} trained on {overlap} of the {len(locked)} locked validation images of "
            f"{against.name}: measured there, it would be judged on images it learned. Train it on the base data "
            f"less those images (its split.json's val part), as retrain_model does."
        )
    comparison = compare_with(registry.get_engine(candidate, device=device), against, locked, [], device)
    candidate.metrics = {**candidate.metrics, "comparison": comparison}
    candidate.save(update_fields=["metrics"])
    audit.record(
        audit.Action.MODEL_COMPARED,
        actor=actor,
        target=candidate,
        name=candidate.name,
        against=against.name,
        locked_validation_images=len(locked),
        gate_failures=gate_failures(candidate, against),
    )
    return comparison


@dataclass
class RetrainOptions:
    export_dir: Path  # the output of export_training_set (feedback.export_training_set)
    name: str | None = None
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = 32
    seed: int = 42
    device: str | None = None
    workers: int | None = None
    max_images: int | None = None  # per class, quick checks only
    extra: dict = field(default_factory=dict)


def default_candidate_name(active: ModelVersion) -> str:
    return f"{active.name}-ft{timezone.now():%Y%m%d%H%M%S}"


def retrain(options: RetrainOptions, *, actor=None) -> ModelVersion:
    """Fine-tune the active model; register the result as a compared, audited candidate."""
    active = ModelVersion.objects.active()
    if active is None:
        raise RetrainingError("no active model version to fine-tune from")
    name = options.name or default_candidate_name(active)
    if ModelVersion.objects.filter(name=name).exists():
        raise RetrainingError(f"a model version named {name!r} already exists")
    export_manifest = _read_export_manifest(options.export_dir)
    data_dir = Path(settings.TRAINING_DATA_DIR)
    locked = locked_validation_of(active)
    out_dir = Path(settings.MODEL_WEIGHTS_DIR) / name
    try:
        # Creating the folder claims the name: of two runs for one name (a message delivered
        # twice), the second stops here instead of training into, and then removing, the first's.
        out_dir.mkdir(parents=True)
    except FileExistsError:
        raise RetrainingError(f"{out_dir} already exists") from None
    try:
        with tempfile.TemporaryDirectory(prefix="pleura-retrain-") as scratch:
            base_dir, review_dir = Path(scratch) / "base", Path(scratch) / "reviews"
            kept = base_training_folder(data_dir, locked, base_dir)
            reviews, locked_reviews = review_training_folder(options.export_dir, locked, review_dir)
            description = _fine_tune(options, active, name, base_dir, review_dir if reviews else None, out_dir)
        holdout, learned_before = _not_learned_before(
            data.scan_review_export(options.export_dir / data.REVIEW_HOLDOUT_FOLDER), active, kept
        )
        # What the fine-tune read, not what the folders held: with --max-images the card said
        # 4430 base images and 10 reviews were learned from 80 images of which no review
        # (learning-loop review).
        read = _read_by_the_fine_tune(out_dir)
        kept, reviews = [s for s in kept if s.relative_name in read], [s for s in reviews if s.relative_name in read]
        _write_split(out_dir, kept + reviews, locked, options.seed)
        description = fit_operating_point(out_dir, description, locked, device=options.device)
        candidate = InferenceEngine(ModelSpec.from_description(out_dir, description), device=options.device)
        comparison = compare_with(candidate, active, locked, holdout, options.device)
        lineage = _lineage(active, kept, reviews, holdout, export_manifest)
        lineage["review_examples_left_out_as_locked"] = locked_reviews
        lineage["reviewed_holdout_left_out_as_learned"] = learned_before
        lineage[LEARNED_REVIEW_PIXELS] = sorted({_pixels(sample) for sample in reviews})
        _write_card(out_dir, description, lineage, comparison)
        return _register(out_dir, name, active, lineage, comparison, actor)
    except BaseException:
        # Nothing half-written stays behind under a name the next attempt will want.
        shutil.rmtree(out_dir, ignore_errors=True)
        raise


# In a version's lineage: the pixels of the reviewed images it was fine-tuned on.
LEARNED_REVIEW_PIXELS = "review_pixel_sha256"


def _not_learned_before(
    holdout: list[data.Sample], active: ModelVersion, base: list[data.Sample]
) -> tuple[list[data.Sample], int]:
    """The reviewed hold-out less the images the models learned: those the active version
    or any of its ancestors was fine-tuned on, and the `base` training images (a training
    radiograph uploaded as a study comes back re-encoded, so by its pixels); (kept, number
    left out). Which patients an export holds out depends on its fraction and the secret
    key, so an image trained on by one generation could be held out by the next export and
    judge the gate on what the model learned (ML review)."""
    if not holdout:
        return holdout, 0
    learned: set[str] = {_pixels(sample) for sample in base}
    version, seen = active, set()
    while version is not None and version.pk not in seen:  # up the lineage, once each
        seen.add(version.pk)
        learned.update((version.training_data.get("lineage") or {}).get(LEARNED_REVIEW_PIXELS, []))
        version = version.parent
    kept = [sample for sample in holdout if _pixels(sample) not in learned]
    return kept, len(holdout) - len(kept)


def _read_export_manifest(export_dir: Path) -> dict:
    path = Path(export_dir) / "manifest.json"
    if not path.is_file():
        raise RetrainingError(f"{path} not found: run export_training_set first")
    return json.loads(path.read_text())


def _fine_tune(
    options: RetrainOptions, active: ModelVersion, name: str, base_dir: Path, review_dir: Path | None, out_dir: Path
) -> dict:
    reviews = [review_dir] if review_dir is not None else []
    config = TrainConfig(
        data_dir=base_dir,
        out_dir=out_dir,
        name=name,
        architecture=active.architecture,
        image_size=active.image_size,
        epochs=options.epochs,
        batch_size=options.batch_size,
        learning_rate=options.learning_rate,
        seed=options.seed,
        device=options.device,
        workers=options.workers,
        init_weights=registry.resolve_weights_path(active),
        extra_data_dirs=reviews,
        max_images=options.max_images,
        progress=False,
    )
    log.info("fine-tuning %s from %s (%d review folders)", name, active.name, len(reviews))
    return train(config)


def _read_by_the_fine_tune(out_dir: Path) -> set[str]:
    """The names of the images train() read (either part of its own split), by its split.json."""
    split = json.loads((out_dir / SPLIT_FILE).read_text())
    return set(split["train"]["files"]) | set(split["val"]["files"])


def _write_split(out_dir: Path, trained_on: list[data.Sample], locked: list[data.Sample], seed: int) -> None:
    """Keep the fine-tune's own early-stopping split aside; split.json keeps the locked set."""
    (out_dir / SPLIT_FILE).rename(out_dir / FINE_TUNE_SPLIT_FILE)
    manifest = data.split_manifest(trained_on, locked, seed=seed, val_fraction=0.0)
    manifest["locked"] = "val is the locked validation set inherited from the parent version"
    (out_dir / SPLIT_FILE).write_text(json.dumps(manifest, indent=1))


def _lineage(active: ModelVersion, kept: list, reviews: list, holdout: list, export_manifest: dict) -> dict:
    return {
        "parent": active.name,
        "parent_weights_sha256": active.weights_sha256,
        "base_examples": len(kept),
        "review_examples": len(reviews),
        "review_examples_normal": sum(1 for s in reviews if s.target == 0),
        "review_examples_pneumonia": sum(1 for s in reviews if s.target == 1),
        "reviewed_holdout_examples": len(holdout),
        "review_hospitals": export_manifest.get("hospitals", {}),
        "review_data_sha256": export_manifest.get("data_sha256", ""),
        "base_data_sha256": data.data_hash(kept),
        "label_rule": export_manifest.get("label_rule", ""),
    }


def _write_card(out_dir: Path, description: dict, lineage: dict, comparison: dict) -> None:
    card = build_card(description)
    card["lineage"] = lineage
    card["comparison"] = comparison
    (out_dir / "model_card.json").write_text(json.dumps(card, indent=2))
    (out_dir / "model_card.md").write_text(render_markdown(card) + _markdown_lineage(lineage, comparison))


def _markdown_lineage(lineage: dict, comparison: dict) -> str:
    rows = []
    for label, key in (("Locked validation", None), ("Reviewed hold-out", "reviewed_holdout")):
        part = comparison[key] if key else comparison
        for who in ("candidate", "active"):
            m = part.get(who)
            if m:
                figures = " | ".join(_figure(m, metric) for metric in ("roc_auc", "sensitivity", "specificity"))
                rows.append(f"| {label} | {who} | {m['images']} | {figures} |")
    return "\n".join(
        [
            "## Lineage",
            f"- Fine-tuned from `{lineage['parent']}` on {lineage['base_examples']} base images and "
            f"{lineage['review_examples']} reviewed studies ({lineage['review_examples_normal']} normal, "
            f"{lineage['review_examples_pneumonia']} pneumonia) from consenting hospitals.",
            f"- Review labels: {lineage['label_rule']}",
            f"- Review data sha256 `{lineage['review_data_sha256']}`; "
            f"base data sha256 `{lineage['base_data_sha256']}`.",
            "",
            "## Comparison with the parent (same images, each at its own threshold)",
            "| set | model | images | ROC AUC | sensitivity | specificity |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def _figure(report: dict, metric: str) -> str:
    """A card's figure, or "not measured" where the set has no case of its class: a
    hold-out of one normal image showed sensitivity 0.0 for both models (learning-loop review)."""
    matrix = report.get("confusion_matrix") or {}
    cases = {"sensitivity": ("tp", "fn"), "specificity": ("tn", "fp")}.get(metric)
    if report.get(metric) is None or (cases and not sum(matrix.get(key, 0) for key in cases)):
        return "not measured"
    return str(report[metric])


@transaction.atomic
def _register(out_dir: Path, name: str, active: ModelVersion, lineage: dict, comparison: dict, actor):
    version = registry.register_from_dir(out_dir, name=name, parent=active, actor=actor)
    version.metrics = {**version.metrics, "comparison": comparison}
    version.training_data = {**version.training_data, "lineage": lineage}
    version.save(update_fields=["metrics", "training_data"])
    failures = gate_failures(version, active)
    registry.record_for_its_hospitals(
        audit.Action.MODEL_RETRAINED,
        version,
        actor=actor,
        name=version.name,
        parent=active.name,
        review_examples=lineage["review_examples"],
        reviewed_holdout_examples=lineage["reviewed_holdout_examples"],
        review_data_sha256=lineage["review_data_sha256"],
        gate_failures=failures,
    )
    return version


# --- Shadow mode ----------------------------------------------------------------------
# The pipeline (diagnostics.pipeline._submit_shadow) predicts with the shadow candidate and
# stores the result with Prediction.is_shadow=True; `Prediction.objects.shown()` keeps
# those out of every page and endpoint doctors use. Promotion ends shadow mode
# (ModelVersion.shadow); the predictions made in it stay is_shadow, never shown.

SHADOW_CHANGED = audit.Action.MODEL_SHADOW_CHANGED


class ShadowError(Exception):
    """A shadow switch that cannot be made, with a message for the operator."""


@transaction.atomic
def set_shadow(version: ModelVersion, on: bool, *, actor=None) -> bool:
    """Switch shadow mode; at most one candidate is in shadow at a time. Returns whether it changed."""
    if on and version.status != ModelVersion.Status.CANDIDATE:
        raise ShadowError(f"{version.name} is {version.status}: only a candidate can run in shadow mode")
    if on:
        others = list(
            ModelVersion.objects.select_for_update()
            .filter(shadow=True)
            .exclude(pk=version.pk)
            .values_list("name", flat=True)
        )
        ModelVersion.objects.filter(name__in=others).update(shadow=False)
    else:
        others = []
    changed = ModelVersion.objects.filter(pk=version.pk, shadow=not on).update(shadow=on)
    version.refresh_from_db(fields=["shadow"])
    if changed:
        audit.record(SHADOW_CHANGED, actor=actor, target=version, name=version.name, shadow=on, replaced=others)
    return bool(changed)
