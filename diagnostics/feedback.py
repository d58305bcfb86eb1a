"""Radiologists' reviews as training data: labels, consent, and the de-identified export.

The label rule (`LABEL_RULE`): each radiologist's *current* review of an image counts
once, while they still work at the hospital as a radiologist; the label chosen by a
strict majority of them is the image's label; a tie is left out. The model's own
prediction never decides a label: a review that agrees with the model carries the
reviewed label like any other.

One image is one example, however often it was sent: studies with the same grey pixels
(the same radiograph sent twice, as DICOM and as PNG, or under two patient IDs) pool
their reviews into one label and are exported once, on one side of the hold-out. Exported
one per study, such an image was trained on and held out for the gate at once, or under
both labels.

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
from hospital.models import Hospital, Role
from mlcore import data

LABEL_RULE = (
    "Studies with the same pixels are one image. Each radiologist's current review of it counts once, while "
    "they still work at the hospital as a radiologist; the label of a strict majority of the image's "
    "reviewers wins; ties are left out. The model's prediction never decides a label."
)
HOLDOUT_RULE = (
    "A reviewed patient (or, without a patient ID, a study) is held back for the promotion gate when "
    "an HMAC of it falls below the hold-out fraction; images linked by a patient or by equal pixels are "
    "held back together if any of theirs is. Stable across exports, never used for training."
)
DEFAULT_HOLDOUT_FRACTION = 0.2
HOLDOUT_FOLDER = data.REVIEW_HOLDOUT_FOLDER
MANIFEST = "manifest.json"
FOLDER_FOR_LABEL = {Label.NORMAL: data.CLASSES[0], Label.PNEUMONIA: data.CLASSES[1]}


class ExportError(Exception):
    """An export that cannot be written, with a message for the operator."""


class _Undecodable(Exception):
    """A stored original that is gone, refused by the storage, or no longer decodes: left
    out and counted, not fatal."""


class _Refused(_Undecodable):
    """The storage refused this one file (a permission, S3's 403). Left out while other
    files read: refused every time, it is the storage's credentials or policy, an outage."""


@dataclass
class ExportResult:
    out_dir: Path
    train: dict[str, int] = field(default_factory=dict)  # label -> count
    holdout: dict[str, int] = field(default_factory=dict)
    per_hospital: dict[str, dict[str, int]] = field(default_factory=dict)
    conflicts_left_out: int = 0
    undecodable_left_out: int = 0
    outside_intended_use_left_out: int = 0
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
    """Reviews whose radiologist still works at the study's hospital as a radiologist (an
    active account, and an active radiologist membership there): one deactivated (left,
    suspended, an account taken over), or whose role was corrected to another, labels
    nothing any more; nor does a review of a study withdrawn as filed in error, whose film
    may be another patient's (in the export and the performance page alike: the page
    counted them, diff review)."""
    return Review.objects.filter(
        study__withdrawn_at__isnull=True,
        radiologist__is_active=True,
        radiologist__memberships__hospital=F("study__hospital"),
        radiologist__memberships__is_active=True,
        radiologist__memberships__role=Role.RADIOLOGIST,
    )


def _with_counted_reviews(hospitals: QuerySet[Hospital] | None) -> QuerySet[Study]:
    allowed = consenting_hospitals()
    if hospitals is not None:
        allowed = allowed.filter(pk__in=hospitals.values("pk"))
    return Study.objects.filter(hospital__in=allowed, pk__in=counted_reviews().values("study"))


def outside_intended_use(hospitals: QuerySet[Hospital] | None = None) -> int:
    """Reviewed studies left out of the export as outside the model's intended use."""
    return _with_counted_reviews(hospitals).exclude(warnings=[]).count()


def reviewed_studies(hospitals: QuerySet[Hospital] | None = None) -> QuerySet[Study]:
    """Studies of consenting hospitals (optionally narrowed to `hospitals`) with counted
    reviews, each with those reviews. Not a study flagged outside the intended use (not a
    chest, an adult, a lateral view): the radiologist's label is true of that image, but
    trained on, or in the gate's hold-out, it teaches or judges the model on images it is
    not meant to read (ML review)."""
    return (
        _with_counted_reviews(hospitals)
        .filter(warnings=[])
        .select_related("hospital")
        .prefetch_related(
            Prefetch(
                "reviews",
                queryset=counted_reviews().only("study_id", "radiologist_id", "correct_label", "updated_at"),
            )
        )
        .order_by("pk")
    )


def _hmac_hex(message: str) -> str:
    return hmac.new(settings.SECRET_KEY.encode(), message.encode(), hashlib.sha256).hexdigest()


def export_name(study: Study) -> str:
    """A file name that identifies the study to nobody without the server's secret key."""
    return f"rv-{_hmac_hex(f'training-export:{study.code}')[:32]}.png"


def export_training_set(
    out_dir: Path,
    *,
    hospitals: QuerySet[Hospital] | None = None,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    actor=None,
) -> ExportResult:
    """Write consented reviewed images as NORMAL/ and PNEUMONIA/ PNGs plus a manifest.

    Held-back images go to holdout/NORMAL and holdout/PNEUMONIA, where a training run
    that reads out_dir as a data folder never looks. Raises ExportError, exporting
    nothing, when the stored originals cannot be read (an outage is not an empty export).
    """
    if not 0 <= holdout_fraction < 1:
        raise ExportError("the hold-out fraction must be in [0, 1)")
    out_dir = Path(out_dir)
    _prepare(out_dir)
    staging = out_dir / STAGING_FOLDER
    try:
        images, undecodable = _decode_reviewed(reviewed_studies(hospitals), staging)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)  # no half export for a retraining to read
        raise
    examples, conflicts = _examples(images)
    held_out = _held_out(examples, holdout_fraction)
    result = ExportResult(
        out_dir=out_dir,
        conflicts_left_out=conflicts,
        undecodable_left_out=undecodable,
        outside_intended_use_left_out=outside_intended_use(hospitals),
    )
    holdout_files: list[str] = []
    for example in examples:
        relative = _place(out_dir, example, example.key in held_out)
        part = result.holdout if example.key in held_out else result.train
        part[example.label] = part.get(example.label, 0) + 1
        counts = result.per_hospital.setdefault(example.first.study.hospital.slug, {"train": 0, "holdout": 0})
        counts["holdout" if example.key in held_out else "train"] += 1
        if example.key in held_out:
            holdout_files.append(relative)
    shutil.rmtree(staging)
    result.data_sha256 = _folder_hash(out_dir)
    result.manifest = _manifest(result, holdout_fraction, holdout_files)
    (out_dir / MANIFEST).write_text(json.dumps(result.manifest, indent=2))
    _audit_exported(result, actor=actor, conflicts=conflicts)
    return result


def _audit_exported(result: ExportResult, *, actor, conflicts: int) -> None:
    """The platform's event with every hospital's counts, and one in each exported
    hospital's own trail with its counts only: its admins gave the consent and answer for
    what left, and the platform's event is shown to platform operators alone."""
    events = [
        audit.build(
            audit.Action.TRAINING_EXPORTED,
            actor=actor,
            examples=result.train_examples,
            holdout=result.holdout_examples,
            hospitals=result.per_hospital,
            conflicts_left_out=conflicts,
            undecodable_left_out=result.undecodable_left_out,
            data_sha256=result.data_sha256,
        )
    ]
    exported = Hospital.objects.filter(slug__in=result.per_hospital).order_by("pk")
    for hospital in exported:
        counts = result.per_hospital[hospital.slug]
        own = {"examples": counts["train"], "holdout": counts["holdout"], "data_sha256": result.data_sha256}
        events.append(audit.build(audit.Action.TRAINING_EXPORTED, actor=actor, hospital=hospital, **own))
    audit.record_all(events)


STAGING_FOLDER = ".staging"


@dataclass(frozen=True)
class _ReviewedImage:
    """One reviewed study, decoded: its grey pixels' hash, and their PNG in the staging folder."""

    study: Study
    pixels: str
    png: Path


@dataclass(frozen=True)
class _Example:
    """One image to export: every reviewed study with these pixels, and their pooled label."""

    images: tuple[_ReviewedImage, ...]
    label: str

    @property
    def first(self) -> _ReviewedImage:
        return self.images[0]

    @property
    def key(self) -> str:
        return self.first.pixels


def _decode_reviewed(studies: Iterable[Study], staging: Path) -> tuple[list[_ReviewedImage], int]:
    """Each reviewed study's grey pixels, written to staging; (decoded, number left out)."""
    from mlcore.preprocessing import gray_to_png, pixel_sha256

    staging.mkdir()
    images, undecodable, refused = [], 0, 0
    for study in studies:
        try:
            gray = _load_gray(study)
        except _Undecodable as exc:
            undecodable += 1
            refused += isinstance(exc, _Refused)
            continue
        png = staging / export_name(study)
        png.write_bytes(gray_to_png(gray))
        images.append(_ReviewedImage(study=study, pixels=pixel_sha256(gray), png=png))
    if refused and not images:
        # Every file refused: an expired key, a bucket policy, a skewed clock (S3 answers
        # all of them 403). Exported as nothing, a retraining would go ahead without them.
        raise ExportError(
            f"the storage refused every stored image ({refused}); nothing was exported: check its credentials "
            "and policy, then try again"
        )
    return images, undecodable


def _examples(images: list[_ReviewedImage]) -> tuple[list[_Example], int]:
    """One example per distinct image, labelled by `LABEL_RULE`; (examples, ties left out)."""
    by_pixels: dict[str, list[_ReviewedImage]] = {}
    for image in images:  # in study order: an example is named after its first study
        by_pixels.setdefault(image.pixels, []).append(image)
    examples, conflicts = [], 0
    for same_image in by_pixels.values():
        label = label_from_reviews(_current_label_per_radiologist(same_image))
        if label is None:
            conflicts += 1
        else:
            examples.append(_Example(images=tuple(same_image), label=label))
    return examples, conflicts


def _current_label_per_radiologist(same_image: list[_ReviewedImage]) -> list[str]:
    """A radiologist who reviewed two copies of one image counts once, by their latest review."""
    latest: dict[int, Review] = {}
    for image in same_image:
        for review in image.study.reviews.all():
            kept = latest.get(review.radiologist_id)
            if kept is None or review.updated_at > kept.updated_at:
                latest[review.radiologist_id] = review
    return [review.correct_label for review in latest.values()]


def _held_out(examples: list[_Example], fraction: float) -> set[str]:
    """The keys of the examples held back: `HOLDOUT_RULE` per patient (or study), spread to
    every example linked to it by a patient or by pixels, so none is on both sides."""
    linked = _Links()
    for example in examples:
        for image in example.images:
            linked.join(example.key, _holdout_unit(image.study))
    held_groups = {linked.group(unit) for unit in linked.units() if _unit_held_out(unit, fraction)}
    return {example.key for example in examples if linked.group(example.key) in held_groups}


class _Links:
    """Union-find over example keys and hold-out units."""

    def __init__(self):
        self._parent: dict[str, str] = {}

    def group(self, item: str) -> str:
        parent = self._parent.setdefault(item, item)
        if parent != item:
            parent = self._parent[item] = self.group(parent)
        return parent

    def join(self, a: str, b: str) -> None:
        self._parent[self.group(a)] = self.group(b)

    def units(self) -> list[str]:
        return [item for item in self._parent if item.startswith(("patient:", "study:"))]


def _holdout_unit(study: Study) -> str:
    return f"patient:{study.hospital_id}:{study.patient_id}" if study.patient_id else f"study:{study.code}"


def _unit_held_out(unit: str, fraction: float) -> bool:
    return int(_hmac_hex(f"training-holdout:{unit}")[:8], 16) / 0xFFFFFFFF < fraction


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
    """The stored original's grey pixels, decoded the way prediction decodes them.

    A file that is gone, refused or no longer decodes raises _Undecodable; a storage that cannot be
    read raises ExportError: exported without those images, a retraining would go ahead
    on an empty or partial set and register it as a candidate.
    """
    from diagnostics import imaging  # pydicom and its plugins: load them where used

    try:
        return imaging.load_grayscale(study)
    except imaging.StoredFileRefused as exc:  # this file's fault, as the pipeline judges it
        raise _Refused from exc
    except (imaging.StoredFileMissing, imaging.StoredFileUndecodable) as exc:
        raise _Undecodable from exc
    except imaging.StoredFileUnreachable as exc:
        raise ExportError(
            f"the stored images could not be read ({exc}); nothing was exported: try again when the storage answers"
        ) from exc


def _place(out_dir: Path, example: _Example, held_out: bool) -> str:
    relative = Path(HOLDOUT_FOLDER if held_out else "") / FOLDER_FOR_LABEL[example.label] / example.first.png.name
    example.first.png.rename(out_dir / relative)
    return relative.as_posix()


def _folder_hash(out_dir: Path) -> str:
    """mlcore's data hash of every exported image (training and hold-out parts)."""
    return data.data_hash(data.scan_review_export(out_dir) + data.scan_review_export(out_dir / HOLDOUT_FOLDER))


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
        "outside_intended_use_left_out": result.outside_intended_use_left_out,
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
