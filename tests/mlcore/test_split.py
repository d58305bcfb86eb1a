"""The patient-level split, on real file names of the training set."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from mlcore import data
from tests.mlcore.helpers import SMALL_DATA

NORMAL_IMAGES = sorted((SMALL_DATA / "NORMAL").iterdir())
PNEUMONIA_IMAGES = sorted((SMALL_DATA / "PNEUMONIA").iterdir())


@pytest.mark.parametrize(
    ("filename", "patient"),
    [
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("IM-0631-0001-0001.jpeg", "IM-0631"),
        ("scan.png", "scan"),
    ],
)
def test_patient_key_reads_the_file_name_prefix(filename, patient):
    assert data.patient_key(filename) == patient


def _write_variant(source, destination, variant: int) -> None:
    """The real radiograph re-encoded, so every file has its own bytes."""
    with Image.open(source) as image:
        image.convert("L").save(destination, format="JPEG", quality=60 + variant)


@pytest.fixture
def dataset(tmp_path):
    """Several patients with several images each, and byte-identical files across patients."""
    root = tmp_path / "data"
    (root / "NORMAL").mkdir(parents=True)
    (root / "PNEUMONIA").mkdir()
    for number in range(6):
        for image in range(2):
            destination = root / "NORMAL" / f"IM-{100 + number:04d}-000{image + 1}.jpeg"
            _write_variant(NORMAL_IMAGES[number], destination, image)
    for number in range(9):
        for image in range(1 + number % 3):
            kind = "virus" if image % 2 else "bacteria"
            destination = root / "PNEUMONIA" / f"person{number + 1}_{kind}_{10 * number + image}.jpeg"
            _write_variant(PNEUMONIA_IMAGES[number % 8], destination, image + 10 * (number // 8))
    # The copy we have holds byte-identical files under different patients' names.
    shutil.copy(root / "NORMAL" / "IM-0100-0002.jpeg", root / "NORMAL" / "IM-0105-0003.jpeg")
    shutil.copy(root / "PNEUMONIA" / "person3_bacteria_20.jpeg", root / "PNEUMONIA" / "person8_virus_99.jpeg")
    return root


def _patients(part):
    return {s.patient for s in part}


def test_no_patient_and_no_identical_file_sits_on_both_sides(dataset):
    samples = data.scan_folder(dataset)
    train, val = data.split_by_patient(samples, val_fraction=0.3, seed=11)

    assert len(samples) == 13 + 19
    assert len(train) + len(val) == 32
    assert _patients(train).isdisjoint(_patients(val))
    assert {s.sha256 for s in train}.isdisjoint({s.sha256 for s in val})
    assert {s.path for s in train} | {s.path for s in val} == {s.path for s in samples}


def test_duplicated_files_pull_their_patients_together(dataset):
    samples = data.scan_folder(dataset)
    by_patient = {}
    for sample in samples:
        by_patient.setdefault(sample.patient, []).append(sample)
    assert by_patient["NORMAL:IM-0100"][1].sha256 == by_patient["NORMAL:IM-0105"][2].sha256
    assert by_patient["PNEUMONIA:person3"][0].sha256 == by_patient["PNEUMONIA:person8"][2].sha256
    together = set()
    for seed in range(12):
        train, _val = data.split_by_patient(samples, val_fraction=0.3, seed=seed)
        side = {s.patient: ("train" if s in train else "val") for s in samples}
        assert side["NORMAL:IM-0100"] == side["NORMAL:IM-0105"]
        assert side["PNEUMONIA:person3"] == side["PNEUMONIA:person8"]
        together.add(side["NORMAL:IM-0100"])
    # Not trivially so: over the seeds, the joined pair lands on both sides.
    assert together == {"train", "val"}


def test_split_is_stratified_by_class(tmp_path):
    root = tmp_path / "data"
    for class_name, images in (("NORMAL", NORMAL_IMAGES), ("PNEUMONIA", PNEUMONIA_IMAGES)):
        (root / class_name).mkdir(parents=True)
        for image in images:
            shutil.copy(image, root / class_name / image.name)
    samples = data.scan_folder(root)
    train, val = data.split_by_patient(samples, val_fraction=0.25, seed=5)
    manifest = data.split_manifest(train, val, seed=5, val_fraction=0.25)

    assert (manifest["val"]["normal"], manifest["val"]["pneumonia"]) == (2, 2)
    assert (manifest["train"]["normal"], manifest["train"]["pneumonia"]) == (6, 6)
    assert manifest["unit"] == "patient"
    assert manifest["val"]["patients"] == 4


def test_split_is_deterministic_for_a_seed_and_changes_with_it(dataset):
    samples = data.scan_folder(dataset)
    first = data.split_by_patient(samples, val_fraction=0.3, seed=42)
    again = data.split_by_patient(list(reversed(samples)), val_fraction=0.3, seed=42)
    assert [s.relative_name for s in first[1]] == [s.relative_name for s in again[1]]
    others = {tuple(s.relative_name for s in data.split_by_patient(samples, 0.3, seed)[1]) for seed in range(8)}
    assert len(others) > 1


def test_scan_folder_needs_both_class_folders(tmp_path):
    (tmp_path / "NORMAL").mkdir()
    with pytest.raises(FileNotFoundError, match="PNEUMONIA is missing"):
        data.scan_folder(tmp_path)
