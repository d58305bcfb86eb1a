"""The training export: consent respected, labels by the documented rule, de-identified."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.core.management import CommandError, call_command

from diagnostics import feedback
from hospital.audit import Action
from hospital.models import AuditEvent, Hospital, Role
from mlcore.preprocessing import gray_to_png, load_grayscale_file
from tests.conftest import storage_refuses, unreachable_media_root
from tests.retraining.conftest import (
    ACCESSION,
    BIRTH_DATE,
    PATIENT_ID,
    PATIENT_NAME,
    REVIEW_IMAGES,
    dicom_with_phi,
    ingest,
    other_radiographs,
    review,
    stored_study,
)


@pytest.fixture
def consenting(hospital_a):
    hospital_a.shares_reviews_for_training = True
    hospital_a.save()
    return hospital_a


def _png(path) -> bytes:
    return gray_to_png(load_grayscale_file(path.read_bytes()))


def _files(out_dir) -> list:
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


def test_a_deactivated_hospitals_reviews_are_not_exported(tmp_path, consenting, radiologist):
    """A hospital that left Pleura consented while it was one (test review: dropping the
    condition failed no test)."""
    review(stored_study(consenting, REVIEW_IMAGES["pneumonia"][0]), radiologist, "pneumonia", verdict="agree")
    Hospital.objects.filter(pk=consenting.pk).update(is_active=False)

    result = feedback.export_training_set(tmp_path / "export", holdout_fraction=0)

    assert (result.train, result.per_hospital) == ({}, {})
    assert _files(tmp_path / "export") == [tmp_path / "export" / "manifest.json"]


def test_label_rule_majority_wins_and_ties_are_left_out():
    assert feedback.label_from_reviews(["pneumonia"]) == "pneumonia"
    assert feedback.label_from_reviews(["normal", "pneumonia", "normal"]) == "normal"
    assert feedback.label_from_reviews(["normal", "pneumonia"]) is None
    assert feedback.label_from_reviews([]) is None


def test_export_holds_only_consenting_hospitals_reviews(
    tmp_path, consenting, hospital_b, radiologist, shared_radiologist
):
    a_pneumonia = stored_study(consenting, REVIEW_IMAGES["pneumonia"][0])
    a_normal = stored_study(consenting, REVIEW_IMAGES["normal"][0], patient_id="MRN-2")
    review(a_pneumonia, radiologist, "pneumonia", verdict="agree")
    review(a_normal, radiologist, "normal")
    for image in (REVIEW_IMAGES["pneumonia"][1], REVIEW_IMAGES["normal"][1]):
        review(stored_study(hospital_b, image, patient_id="B-1"), shared_radiologist, "pneumonia")
    stored_study(consenting, REVIEW_IMAGES["normal"][1], patient_id="MRN-3")  # not reviewed: no label

    out = tmp_path / "export"
    result = feedback.export_training_set(out, holdout_fraction=0)

    assert (result.train, result.per_hospital) == (
        {"pneumonia": 1, "normal": 1},
        {"st-marys": {"train": 1 + 1, "holdout": 0}},
    )
    assert [p.read_bytes() for p in _files(out / "PNEUMONIA")] == [_png(REVIEW_IMAGES["pneumonia"][0])]
    assert [p.read_bytes() for p in _files(out / "NORMAL")] == [_png(REVIEW_IMAGES["normal"][0])]
    assert len(_files(out)) == 3  # two images and the manifest: nothing of Riverside's
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hospitals"] == {"st-marys": {"train": 2, "holdout": 0}}
    assert manifest["label_rule"] == feedback.LABEL_RULE
    assert manifest["data_sha256"] == result.data_sha256
    event, own = AuditEvent.objects.filter(action=Action.TRAINING_EXPORTED).order_by("id")
    assert (own.hospital, own.outcome, own.detail) == (
        consenting,
        "success",
        {"examples": 2, "holdout": 0, "data_sha256": result.data_sha256},
    )  # in St Mary's own trail, for its admins: Riverside exported nothing, so has no event
    assert (event.actor_user, event.hospital, event.outcome) == (None, None, "success")
    assert event.detail == {
        "examples": 2,
        "holdout": 0,
        "hospitals": {"st-marys": {"train": 2, "holdout": 0}},
        "conflicts_left_out": 0,
        "undecodable_left_out": 0,
        "data_sha256": result.data_sha256,
    }


def test_withdrawn_consent_empties_the_next_export(tmp_path, consenting, radiologist):
    review(stored_study(consenting, REVIEW_IMAGES["normal"][0]), radiologist, "normal")
    out = tmp_path / "export"
    assert feedback.export_training_set(out, holdout_fraction=0).train_examples == 1
    consenting.shares_reviews_for_training = False
    consenting.save()
    result = feedback.export_training_set(out, holdout_fraction=0)
    assert (result.train_examples, result.per_hospital) == (0, {})
    assert [p.name for p in _files(out)] == ["manifest.json"]


def test_command_refuses_a_named_hospital_without_consent(tmp_path, consenting, hospital_b):
    with pytest.raises(CommandError, match="riverside has not consented"):
        call_command("export_training_set", "--out", str(tmp_path / "x"), "--hospital", "riverside")
    assert not AuditEvent.objects.filter(action=Action.TRAINING_EXPORTED).exists()
    out = io.StringIO()
    call_command("export_training_set", "--out", str(tmp_path / "y"), "--hospital", "st-marys", stdout=out)
    assert "exported 0 training and 0 hold-out examples of 0 hospital(s)" in out.getvalue()
    # Why, where it read as a broken export (fresh-machine review).
    assert out.getvalue().endswith(
        "no hospital's reviews were exported: none that consents to training use has reviewed studies "
        "(a hospital admin gives consent on the portal's Training consent page)\n"
    )


def test_command_will_not_overwrite_a_folder_that_is_not_an_export(tmp_path, consenting):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(CommandError, match="is not empty"):
        call_command("export_training_set", "--out", str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_tied_reviews_are_left_out(tmp_path, consenting, radiologist, shared_radiologist):
    study = stored_study(consenting, REVIEW_IMAGES["pneumonia"][0])
    review(study, radiologist, "pneumonia")
    review(study, shared_radiologist, "normal")
    result = feedback.export_training_set(tmp_path / "export", holdout_fraction=0)
    assert (result.train_examples, result.conflicts_left_out) == (0, 1)


def test_reviews_of_radiologists_no_longer_at_the_hospital_label_nothing(
    tmp_path, consenting, radiologist, shared_radiologist
):
    """A deactivated account (or membership) may be one that left, was suspended or was
    taken over: its reviews no longer decide training labels."""
    left_alone, outvoted = (stored_study(consenting, image) for image in REVIEW_IMAGES["pneumonia"][:2])
    review(left_alone, shared_radiologist, "pneumonia")
    review(outvoted, radiologist, "normal")
    review(outvoted, shared_radiologist, "pneumonia")  # a tie while both count
    shared_radiologist.memberships.filter(hospital=consenting).update(is_active=False)

    result = feedback.export_training_set(tmp_path / "export", holdout_fraction=0)

    assert (result.train_examples, result.conflicts_left_out) == (1, 0)
    assert [p.read_bytes() for p in _files(tmp_path / "export" / "NORMAL")] == [_png(REVIEW_IMAGES["pneumonia"][1])]


def test_reviews_of_a_radiologist_whose_role_was_corrected_label_nothing(tmp_path, consenting, radiologist):
    """A role given by mistake and corrected by an admin: that account's reviews no longer
    label training data (they did while the membership stayed active)."""
    review(stored_study(consenting, REVIEW_IMAGES["pneumonia"][0]), radiologist, "pneumonia")
    radiologist.memberships.filter(hospital=consenting).update(role=Role.DOCTOR)

    result = feedback.export_training_set(tmp_path / "export", holdout_fraction=0)

    assert (result.train_examples, result.holdout_examples, result.conflicts_left_out) == (0, 0, 0)


def test_holdout_keeps_each_patient_on_one_side_and_is_stable(tmp_path, consenting, radiologist):
    """Checked by each patient's own two files, not by the product's hold-out rule: an
    empty hold-out, or one split study by study, passed before (test-suite review)."""
    normal, pneumonia = other_radiographs("NORMAL", 8), other_radiographs("PNEUMONIA", 8)
    studies = {
        f"P-{n}": [stored_study(consenting, image, patient_id=f"P-{n}") for image in (normal[n], pneumonia[n])]
        for n in range(8)
    }
    for study in (s for pair in studies.values() for s in pair):
        review(study, radiologist, "pneumonia")

    first = feedback.export_training_set(tmp_path / "one", holdout_fraction=0.5)
    second = feedback.export_training_set(tmp_path / "two", holdout_fraction=0.5)

    assert first.manifest["holdout"]["files"] == second.manifest["holdout"]["files"]
    held = {p.name for p in _files(tmp_path / "one" / "holdout")}
    trained = {p.name for p in _files(tmp_path / "one") if "holdout" not in p.parts and p.suffix == ".png"}
    sides = {patient: {feedback.export_name(s) in held for s in pair} for patient, pair in studies.items()}
    assert all(len(side) == 1 for side in sides.values()), sides  # both studies on one side
    held_patients = [patient for patient, side in sides.items() if side == {True}]
    assert 0 < len(held_patients) < len(studies)  # a real hold-out, and a real training set
    assert len(held) == 2 * len(held_patients) and len(trained) == 16 - len(held)
    assert (first.holdout_examples, first.train_examples) == (len(held), len(trained))


def _patient_id(hospital, *, held: bool) -> str:
    """A patient ID the hold-out rule (fraction 0.5) puts on the given side."""
    ids = (f"MRN-{n}" for n in range(1000))
    return next(p for p in ids if feedback._unit_held_out(f"patient:{hospital.pk}:{p}", 0.5) is held)


def test_one_image_sent_twice_is_one_example_labelled_by_all_its_reviews(
    tmp_path, consenting, radiologist, shared_radiologist
):
    """Exported per study, the same radiograph sent twice (with and without a patient ID)
    was trained on and held out for the gate at once, and reviewed both ways it went into
    NORMAL/ and PNEUMONIA/ (learning-loop review)."""
    image, other = other_radiographs("PNEUMONIA", 2)
    twice = [stored_study(consenting, image, patient_id="MRN-1"), stored_study(consenting, image, patient_id="")]
    for study in twice:
        review(study, radiologist, "pneumonia")
    split = [stored_study(consenting, other, patient_id="MRN-2"), stored_study(consenting, other, patient_id="MRN-3")]
    review(split[0], radiologist, "pneumonia")
    review(split[1], shared_radiologist, "normal")  # one vote each on one image: a tie

    result = feedback.export_training_set(tmp_path / "export", holdout_fraction=0.5)

    pngs = [p for p in _files(tmp_path / "export") if p.suffix == ".png"]
    assert [p.read_bytes() for p in pngs] == [_png(image)]
    assert pngs[0].name == feedback.export_name(twice[0])
    assert pngs[0].parent.name == "PNEUMONIA"
    assert (result.train_examples + result.holdout_examples, result.conflicts_left_out) == (1, 1)


def test_a_radiologist_who_reviewed_two_copies_of_an_image_counts_once_by_the_latest(
    tmp_path, consenting, radiologist, shared_radiologist
):
    image = other_radiographs("NORMAL", 1)[0]
    first, second = stored_study(consenting, image, patient_id="A"), stored_study(consenting, image, patient_id="B")
    review(first, radiologist, "pneumonia")
    review(first, shared_radiologist, "pneumonia")
    review(second, radiologist, "normal")  # later, on the other copy: now read as normal

    result = feedback.export_training_set(tmp_path / "export", holdout_fraction=0)

    # One vote each way, a tie: counted per copy it was pneumonia by 2 to 1.
    assert (result.train_examples, result.conflicts_left_out) == (0, 1)


def test_images_linked_by_a_patient_or_by_pixels_are_held_out_together(tmp_path, consenting, radiologist):
    """Patient Q's image was also sent under patient P: P's other image must follow it to
    the hold-out, or P would be on both sides."""
    kept_patient, held_patient = _patient_id(consenting, held=False), _patient_id(consenting, held=True)
    shared, p_only = other_radiographs("NORMAL", 2)
    studies = [
        stored_study(consenting, shared, patient_id=held_patient),
        stored_study(consenting, shared, patient_id=kept_patient),
        stored_study(consenting, p_only, patient_id=kept_patient),
    ]
    for study in studies:
        review(study, radiologist, "normal")

    result = feedback.export_training_set(tmp_path / "export", holdout_fraction=0.5)

    assert (result.holdout, result.train) == ({"normal": 2}, {})
    held = sorted(p.read_bytes() for p in _files(tmp_path / "export" / "holdout"))
    assert held == sorted([_png(shared), _png(p_only)])


def test_an_export_while_the_storage_is_down_fails_and_exports_nothing(tmp_path, settings, consenting, radiologist):
    """It exported 0 examples, counted them "undecodable", and a retraining went ahead on
    that and registered a candidate (learning-loop review)."""
    review(stored_study(consenting, REVIEW_IMAGES["normal"][0]), radiologist, "normal")
    settings.MEDIA_ROOT = unreachable_media_root(tmp_path)
    out = tmp_path / "export"

    with pytest.raises(CommandError, match=r"the stored images could not be read \(NotADirectoryError\); nothing"):
        call_command("export_training_set", "--out", str(out), stdout=io.StringIO())

    assert not out.exists()
    assert not AuditEvent.objects.filter(action=Action.TRAINING_EXPORTED).exists()


def test_a_reviewed_study_whose_file_is_gone_is_left_out_and_counted(tmp_path, consenting, radiologist):
    gone, kept = (stored_study(consenting, image) for image in REVIEW_IMAGES["normal"])
    for study in (gone, kept):
        review(study, radiologist, "normal")
    gone.original_file.storage.delete(gone.original_file.name)
    out = io.StringIO()

    call_command("export_training_set", "--out", str(tmp_path / "export"), "--holdout-fraction", "0", stdout=out)

    assert "exported 1 training and 0 hold-out examples of 1 hospital(s)" in out.getvalue()
    assert "0 left out for tied reviews, 1 whose stored file is gone or no longer decodes" in out.getvalue()


def _assert_no_identifiers(out, study) -> None:
    needles = [
        PATIENT_ID,
        PATIENT_NAME,
        PATIENT_NAME.replace("^", " "),
        "Quixote",
        "Dulcinea",
        BIRTH_DATE,
        "1971-04-23",
        ACCESSION,
        str(study.code),
        str(study.code).replace("-", ""),
    ]
    files = _files(out)
    assert files
    for path in files:
        content = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in content, f"{needle!r} found in {path.name}"
            assert needle.lower().encode() not in content.lower()
            assert needle not in str(path.relative_to(out))
    for path in files:
        if path.suffix == ".png":
            assert re.fullmatch(r"rv-[0-9a-f]{32}\.png", path.name)


def test_export_of_a_stored_jpeg_carries_no_identifier(tmp_path, consenting, radiologist):
    study = stored_study(consenting, REVIEW_IMAGES["pneumonia"][0])
    review(study, radiologist, "pneumonia")
    feedback.export_training_set(tmp_path / "export", holdout_fraction=0)
    _assert_no_identifiers(tmp_path / "export", study)


def test_export_of_an_uploaded_dicom_carries_no_identifier_from_its_header(tmp_path, consenting, doctor, radiologist):
    study = ingest(consenting, dicom_with_phi(), doctor)
    study.refresh_from_db()
    assert study.patient_id == PATIENT_ID  # the header really carried it into Pleura
    review(study, radiologist, "normal")
    result = feedback.export_training_set(tmp_path / "export", holdout_fraction=0)
    assert result.train == {"normal": 1}
    _assert_no_identifiers(tmp_path / "export", study)


def test_a_file_the_storage_refuses_is_left_out_not_the_whole_export(tmp_path, consenting, radiologist, monkeypatch):
    """One file the storage refuses (a permission, S3's 403) is that file's fault, as the
    pipeline judges it: it stopped every export, asking to try again when the storage
    answers, which it already did (diff review)."""
    refused, readable = (stored_study(consenting, image) for image in REVIEW_IMAGES["normal"])
    for study in (refused, readable):
        review(study, radiologist, "normal")
    storage_refuses(monkeypatch, refused)
    result = feedback.export_training_set(tmp_path / "export", holdout_fraction=0)

    assert (result.train_examples, result.undecodable_left_out) == (1, 1)


def test_a_storage_that_refuses_every_file_fails_the_export(tmp_path, consenting, radiologist, monkeypatch):
    """S3 answers 403 to every object when its key expired or its policy changed: taken
    file by file as each one's fault, the export came out empty and retraining went ahead
    without the reviews (review of the mends)."""
    first, second = (stored_study(consenting, image) for image in REVIEW_IMAGES["normal"])
    for study in (first, second):
        review(study, radiologist, "normal")
    storage_refuses(monkeypatch, first, second)

    with pytest.raises(feedback.ExportError, match=r"the storage refused every stored image \(2\); nothing"):
        feedback.export_training_set(tmp_path / "export", holdout_fraction=0)
    assert not (tmp_path / "export").exists()
    assert not AuditEvent.objects.filter(action=Action.TRAINING_EXPORTED).exists()


def test_a_study_outside_the_intended_use_is_left_out_of_training_and_the_hold_out_and_counted(
    tmp_path, consenting, radiologist
):
    """Flagged "not chest" or "adult", it was exported with its radiologist's label, into
    training or the gate's hold-out (ML review)."""
    flagged = stored_study(consenting, REVIEW_IMAGES["normal"][0], warnings=["not_chest", "adult"])
    kept = stored_study(consenting, REVIEW_IMAGES["normal"][1], patient_id="MRN-2")
    for study in (flagged, kept):
        review(study, radiologist, "normal")
    out = io.StringIO()

    call_command("export_training_set", "--out", str(tmp_path / "export"), "--holdout-fraction", "0", stdout=out)

    assert "exported 1 training and 0 hold-out examples of 1 hospital(s)" in out.getvalue()
    assert "0 whose stored file is gone or no longer decodes, 1 outside the intended use;" in out.getvalue()
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert (manifest["train"], manifest["outside_intended_use_left_out"]) == ({"normal": 1, "pneumonia": 0}, 1)


def test_a_study_withdrawn_as_filed_in_error_labels_nothing(tmp_path, consenting, radiologist, doctor):
    """Its film may be another patient's: its radiologist's label is not of this image's
    patient, and the study left the worklist for that reason."""
    from diagnostics.withdrawal import withdraw_study

    withdrawn = stored_study(consenting, REVIEW_IMAGES["normal"][0])
    kept = stored_study(consenting, REVIEW_IMAGES["normal"][1], patient_id="MRN-2")
    for study in (withdrawn, kept):
        review(study, radiologist, "normal")
    withdraw_study(withdrawn, reason="Another patient's film", user=doctor)

    result = feedback.export_training_set(tmp_path / "export", holdout_fraction=0)

    assert result.train == {"normal": 1}
    assert [p.read_bytes() for p in _files(tmp_path / "export" / "NORMAL")] == [_png(REVIEW_IMAGES["normal"][1])]
