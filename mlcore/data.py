"""The training data: scanning the folder layout and splitting it by patient."""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from pathlib import Path

CLASSES = ("NORMAL", "PNEUMONIA")  # index = target (0 normal, 1 pneumonia)
# What earlier versions of compare_model wrote beside the weights and registration stored
# for the gate. It is never read now (anyone able to write the folder could edit it):
# registration says so when it finds one, and `compare_model NAME` measures instead.
COMPARISON_FILE = "comparison.json"
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}

_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_"),  # person1000_bacteria_2931.jpeg
    re.compile(r"^(NORMAL2-IM-\d+)-"),  # NORMAL2-IM-1427-0001.jpeg
    re.compile(r"^(IM-\d+)-"),  # IM-0115-0001.jpeg
)


@dataclass(frozen=True)
class Sample:
    path: Path
    target: int  # 1 = pneumonia
    patient: str
    sha256: str

    @property
    def relative_name(self) -> str:
        return f"{CLASSES[self.target]}/{self.path.name}"


def patient_key(filename: str) -> str:
    """Several images of one patient share a prefix; images without one are their own patient."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(filename)
        if match:
            return match.group(1)
    return Path(filename).stem


def scan_folder(root: str | Path) -> list[Sample]:
    """All images under root/NORMAL and root/PNEUMONIA, sorted for reproducibility."""
    root = Path(root)
    samples = []
    for target, class_name in enumerate(CLASSES):
        folder = root / class_name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: expected {root}/NORMAL and {root}/PNEUMONIA")
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                samples.append(Sample(path, target, f"{class_name}:{patient_key(path.name)}", digest))
    if not samples:
        raise FileNotFoundError(f"no images found under {root}")
    return samples


# A review export (`diagnostics.feedback`) beside the training layout: NORMAL/ and
# PNEUMONIA/ for training, and the same under holdout/ for the promotion gate.
REVIEW_HOLDOUT_FOLDER = "holdout"


def scan_review_export(folder: str | Path) -> list[Sample]:
    """The PNG images of one part of a review export; none is fine (a hospital may have no
    reviews yet), where `scan_folder` insists on a training set."""
    folder = Path(folder)
    if not any(path.is_file() for name in CLASSES for path in (folder / name).glob("*.png")):
        return []
    return scan_folder(folder)


def _patient_groups(samples: list[Sample]) -> dict[str, list[Sample]]:
    """Patients joined by byte-identical files, so no image sits on both sides of the split."""
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    first_owner: dict[str, str] = {}
    for sample in samples:
        owner = first_owner.setdefault(sample.sha256, sample.patient)
        parent[find(sample.patient)] = find(owner)
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(find(sample.patient), []).append(sample)
    return groups


def split_by_patient(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Stratified patient-level split: about `val_fraction` of each class's images go to validation."""
    # Sorted first: the groups (and so the split) must not depend on the order of the input.
    groups = _patient_groups(sorted(samples, key=lambda s: s.relative_name))
    train: list[Sample] = []
    val: list[Sample] = []
    rng = random.Random(seed)
    for target in (0, 1):
        class_groups = sorted(
            (key for key, members in groups.items() if round(sum(s.target for s in members) / len(members)) == target)
        )
        rng.shuffle(class_groups)
        wanted = val_fraction * sum(len(groups[key]) for key in class_groups)
        taken = 0
        for key in class_groups:
            destination = val if taken < wanted else train
            destination.extend(groups[key])
            if destination is val:
                taken += len(groups[key])
    return sorted(train, key=lambda s: s.relative_name), sorted(val, key=lambda s: s.relative_name)


def split_manifest(train: list[Sample], val: list[Sample], *, seed: int, val_fraction: float) -> dict:
    def describe(part: list[Sample]) -> dict:
        return {
            "images": len(part),
            "patients": len({s.patient for s in part}),
            "normal": sum(1 for s in part if s.target == 0),
            "pneumonia": sum(1 for s in part if s.target == 1),
            "files": [s.relative_name for s in part],
        }

    return {
        "seed": seed,
        "val_fraction": val_fraction,
        "unit": "patient",
        "train": describe(train),
        "val": describe(val),
    }


def data_hash(samples: list[Sample]) -> str:
    digest = hashlib.sha256()
    for sample in sorted(samples, key=lambda s: s.relative_name):
        digest.update(f"{sample.relative_name}:{sample.target}:{sample.sha256}\n".encode())
    return digest.hexdigest()
