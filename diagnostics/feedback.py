"""Radiologists' reviews as training data: labels, consent, and the de-identified export.

The label rule (`LABEL_RULE`): each radiologist's *current* review of a study counts
once, while they still work at the hospital; the label chosen by a strict majority of
them is the study's label; a tie is left out. The model's own prediction never decides
a label: a review that agrees with the model carries the reviewed label like any other.

Only studies of hospitals that consent (`Hospital.shares_reviews_for_training`) are
ever read. The export holds pixels only: a PNG of the decoded grey image (no DICOM
header, no PNG text chunks), named by an HMAC of the study's public id, so neither
the file names nor the manifest carry a study code or a patient identifier. Burned-in
text in the pixels themselves cannot be removed this way (see the README).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db.models import F, Prefetch, QuerySet
from django.utils import timezone

from diagnostics.models import Label, Review, Study
from hospital import audit
from hospital.models import Hospital
from mlcore import data

LABEL_RULE = (
    "Each radiologist's current review counts once, while they still work at the hospital; the label of a "
    "strict majority of the study's "
    "reviewers wins; ties are left out. The model's prediction never decides a label."
)
HOLDOUT_RULE = (
    "A reviewed patient (or, without a patient ID, a study) is held back for the promotion gate when "
    "an HMAC of it falls below the hold-out fraction: stable across exports, never used for training."
)
DEFAULT_HOLDOUT_FRACTION = 0.2
HOLDOUT_FOLDER = "holdout"
MANIFEST = "manifest.json"
FOLDER_FOR_LABEL = {Label.NORMAL: data.CLASSES[0], Label.PNEUMONIA: data.CLASSES[1]}


class ExportError(Exception):
    """An export that cannot be written, with a message for the operator."""


@dataclass(frozen=True)
class LabelledStudy:
    study: Study
    label: str
    reviewers: int


@dataclass
class ExportResult:
    out_dir: Path
    train: dict[str, int] = field(default_factory=dict)  # label -> count
    holdout: dict[str, int] = field(default_factory=dict)
    per_hospital: dict[str, dict[str, int]] = field(default_factory=dict)
    conflicts_left_out: int = 0
    undecodable_left_out: int = 0
    data_sha256: str = ""
    manifest: dict = field(default_factory=dict)

    @property
    def train_examples(self) -> int:
        return sum(self.train.values())

    @property
    def holdout_examples(self) -> int:
        return sum(self.holdout.values())


def label_from_reviews(labels: Iterable[str]) -> str | None:
    """The study's label under `LABEL_RULE`, or None when the reviewers are split evenly."""
    counts = Counter(labels).most_common()
    if not counts:
        return None
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]


def consenting_hospitals() -> QuerySet[Hospital]:
    return Hospital.objects.filter(shares_reviews_for_training=True, is_active=True)


def counted_reviews() -> QuerySet[Review]:
    """Reviews whose radiologist still works at the study's hospital (an active account and
    membership there): one deactivated (left, suspended, an account taken over) labels
    nothing any more."""
    return Review.objects.filter(
        radiologist__is_active=True,
        radiologist__memberships__hospital=F("study__hospital"),
        radiologist__memberships__is_active=True,
    )


def reviewed_studies(hospitals: QuerySet[Hospital] | None = None) -> QuerySet[Study]:
    """Studies of consenting hospitals (optionally narrowed to `hospitals`) with counted
    reviews, each with those reviews."""
    allowed = consenting_hospitals()
    if hospitals is not None:
        allowed = allowed.filter(pk__in=hospitals.values("pk"))
    return (
        Study.objects.filter(hospital__in=allowed, pk__in=counted_reviews().values("study"))
        .select_related("hospital")
        .prefetch_related(Prefetch("reviews", queryset=counted_reviews().only("study_id", "correct_label")))
        .order_by("pk")
    )


def labelled_studies(hospitals: QuerySet[Hospital] | None = None) -> tuple[list[LabelledStudy], int]:
    """(labelled studies, number left out because their reviewers disagree evenly)."""
    labelled, conflicts = [], 0
    for study in reviewed_studies(hospitals):
        labels = [review.correct_label for review in study.reviews.all()]
        label = label_from_reviews(labels)
        if label is None:
            conflicts += 1
            continue
        labelled.append(LabelledStudy(study=study, label=label, reviewers=len(labels)))
    return labelled, conflicts


def _hmac_hex(message: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), message.encode(), hashlib.sha256).hexdigest()


def export_name(study: Study) -> str:
    """A file name that identifies the study to nobody without the server's secret key."""
    return f"rv-{_hmac_hex(f'training-export:{study.code}')[:32]}.png"


def is_held_out(study: Study, fraction: float) -> bool:
    """`HOLDOUT_RULE`: all studies of one patient land on the same side, every time."""
    unit = f"patient:{study.hospital_id}:{study.patient_id}" if study.patient_id else f"study:{study.code}"
    return int(_hmac_hex(f"training-holdout:{unit}")[:8], 16) / 0xFFFFFFFF < fraction


def export_training_set(
    out_dir: Path,
    *,
    hospitals: QuerySet[Hospital] | None = None,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    actor=None,
) -> ExportResult:
    """Write consented reviewed studies as NORMAL/ and PNEUMONIA/ PNGs plus a manifest.

    Held-back studies go to holdout/NORMAL and holdout/PNEUMONIA, where a training run
    that reads out_dir as a data folder never looks.
    """
    if not 0 <= holdout_fraction < 1:
        raise ExportError("the hold-out fraction must be in [0, 1)")
    out_dir = Path(out_dir)
    _prepare(out_dir)
    labelled, conflicts = labelled_studies(hospitals)
    result = ExportResult(out_dir=out_dir, conflicts_left_out=conflicts)
    holdout_files: list[str] = []
    for item in labelled:
        held_out = is_held_out(item.study, holdout_fraction)
        relative = _write_example(out_dir, item, held_out)
        if relative is None:
            result.undecodable_left_out += 1
            continue
        part = result.holdout if held_out else result.train
        part[item.label] = part.get(item.label, 0) + 1
        counts = result.per_hospital.setdefault(item.study.hospital.slug, {"train": 0, "holdout": 0})
        counts["holdout" if held_out else "train"] += 1
        if held_out:
            holdout_files.append(relative)
    result.data_sha256 = _folder_hash(out_dir)
    result.manifest = _manifest(result, holdout_fraction, holdout_files)
    (out_dir / MANIFEST).write_text(json.dumps(result.manifest, indent=2))
    audit.record(
        audit.Action.TRAINING_EXPORTED,
        actor=actor,
        examples=result.train_examples,
        holdout=result.holdout_examples,
        hospitals=result.per_hospital,
        conflicts_left_out=conflicts,
        undecodable_left_out=result.undecodable_left_out,
        data_sha256=result.data_sha256,
    )
    return result


def _prepare(out_dir: Path) -> None:
    """An empty export folder; an earlier export there is replaced, anything else refused."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MANIFEST).is_file():
            raise ExportError(f"{out_dir} is not empty and holds no earlier export: choose an empty folder")
        shutil.rmtree(out_dir)
    for folder in (out_dir, out_dir / HOLDOUT_FOLDER):
        for class_name in data.CLASSES:
            (folder / class_name).mkdir(parents=True, exist_ok=True)


def _load_gray(study: Study):
    """The stored original's grey pixels, decoded the way prediction decodes them."""
    from diagnostics import imaging  # pydicom and its plugins: load them where used

    return imaging.load_grayscale(study)


def _write_example(out_dir: Path, item: LabelledStudy, held_out: bool) -> str | None:
    from mlcore.preprocessing import gray_to_png

    try:
        gray = _load_gray(item.study)
    except Exception:  # a stored file that no longer decodes is left out, not fatal
        return None
    relative = Path(HOLDOUT_FOLDER if held_out else "") / FOLDER_FOR_LABEL[item.label] / export_name(item.study)
    (out_dir / relative).write_bytes(gray_to_png(gray))
    return relative.as_posix()


def _folder_hash(out_dir: Path) -> str:
    """mlcore's data hash of every exported image (training and hold-out parts)."""
    return data.data_hash(exported_samples(out_dir) + exported_samples(out_dir / HOLDOUT_FOLDER))


def exported_samples(folder: Path) -> list[data.Sample]:
    """The images of one part of an export (none is fine: a hospital may have no reviews yet)."""
    if not any(path.is_file() for name in data.CLASSES for path in (folder / name).glob("*.png")):
        return []
    return data.scan_folder(folder)


def _manifest(result: ExportResult, holdout_fraction: float, holdout_files: list[str]) -> dict:
    return {
        "created_at": timezone.now().isoformat(),
        "label_rule": LABEL_RULE,
        "holdout_rule": HOLDOUT_RULE,
        "holdout_fraction": holdout_fraction,
        "layout": "NORMAL/ and PNEUMONIA/ for training; holdout/NORMAL and holdout/PNEUMONIA for the gate",
        "deidentification": "pixels only: PNG of the decoded grey image, no DICOM header, HMAC file names",
        "train": {"normal": result.train.get(Label.NORMAL, 0), "pneumonia": result.train.get(Label.PNEUMONIA, 0)},
        "holdout": {
            "normal": result.holdout.get(Label.NORMAL, 0),
            "pneumonia": result.holdout.get(Label.PNEUMONIA, 0),
            "files": sorted(holdout_files),
        },
        "hospitals": result.per_hospital,
        "conflicts_left_out": result.conflicts_left_out,
        "undecodable_left_out": result.undecodable_left_out,
        "data_sha256": result.data_sha256,
    }


def retrain_from_reviews(
    *,
    name: str | None = None,
    actor=None,
    hospitals: QuerySet[Hospital] | None = None,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    export_dir: Path | None = None,
    **options,
):
    """The whole loop: export consented reviews, fine-tune the active model, register
    the compared candidate. `export_dir` keeps the export; by default it is temporary."""
    from mlcore.retraining import RetrainOptions, retrain

    if export_dir is not None:
        export_training_set(export_dir, hospitals=hospitals, holdout_fraction=holdout_fraction, actor=actor)
        return retrain(RetrainOptions(export_dir=Path(export_dir), name=name, **options), actor=actor)
    with tempfile.TemporaryDirectory(prefix="pleura-export-") as scratch:
        return retrain_from_reviews(
            name=name,
            actor=actor,
            hospitals=hospitals,
            holdout_fraction=holdout_fraction,
            export_dir=Path(scratch) / "reviews",
            **options,
        )
