"""A short real retraining: fine-tuned from the active model on base data plus consented
reviews, compared with it on the locked validation set, registered with lineage, audited."""

from __future__ import annotations

import io
import json

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from hospital.audit import Action
from hospital.models import AuditEvent
from mlcore import registry, retraining
from mlcore.models import ModelVersion
from mlcore.promotion import gate_failures
from tests.retraining.conftest import REVIEW_IMAGES, review, stored_study

pytestmark = pytest.mark.slow


def _split(version: ModelVersion, name: str = retraining.SPLIT_FILE) -> dict:
    return json.loads((registry.resolve_weights_path(version).parent / name).read_text())


def test_retraining_produces_a_compared_candidate_with_lineage(
    tmp_path, active_model, hospital_a, hospital_b, radiologist, shared_radiologist, superuser
):
    hospital_a.shares_reviews_for_training = True
    hospital_a.save()
    review(stored_study(hospital_a, REVIEW_IMAGES["pneumonia"][0]), radiologist, "pneumonia", verdict="agree")
    review(stored_study(hospital_a, REVIEW_IMAGES["normal"][0], patient_id="MRN-2"), radiologist, "normal")
    review(stored_study(hospital_b, REVIEW_IMAGES["normal"][1], patient_id="B-1"), shared_radiologist, "normal")

    before = AuditEvent.objects.order_by("-id").first().pk  # the fixture's registration and promotion
    out = io.StringIO()
    call_command(
        "retrain_model",
        "--name",
        "pleura-tiny-ft1",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--holdout-fraction",
        "0",
        "--export-dir",
        str(tmp_path / "export"),
        "--actor",
        superuser.email,
        stdout=out,
    )
    assert "registered candidate pleura-tiny-ft1 (parent pleura-tiny)" in out.getvalue()
    # The gate's verdict, whichever it is, never a bare "promote with" (fresh-machine review).
    verdict = gate_failures(ModelVersion.objects.get(name="pleura-tiny-ft1"), active_model)
    expected = (
        ["the promotion gate would refuse it:", *(f"  - {reason}" for reason in verdict)]
        if verdict
        else ["the promotion gate would accept it: manage.py promote_model pleura-tiny-ft1"]
    )
    assert out.getvalue().splitlines()[-len(expected) :] == expected

    candidate = ModelVersion.objects.get(name="pleura-tiny-ft1")
    assert (candidate.status, candidate.parent, candidate.shadow) == ("candidate", active_model, False)
    assert ModelVersion.objects.active() == active_model

    # The locked validation set: inherited unchanged, never trained on.
    locked_files = _split(active_model)["val"]["files"]
    assert _split(candidate)["val"]["files"] == locked_files
    fine_tune = _split(candidate, retraining.FINE_TUNE_SPLIT_FILE)
    trained_on = set(fine_tune["train"]["files"]) | set(fine_tune["val"]["files"])
    assert trained_on.isdisjoint(locked_files)
    assert len(trained_on) == 16 - len(locked_files) + 2  # base images left + Hospital A's two reviews

    lineage = candidate.training_data["lineage"]
    assert lineage["parent"] == "pleura-tiny"
    assert (lineage["base_examples"], lineage["review_examples"]) == (16 - len(locked_files), 2)
    assert (lineage["review_examples_normal"], lineage["review_examples_pneumonia"]) == (1, 1)
    from mlcore.preprocessing import load_grayscale_file, pixel_sha256

    assert lineage["review_pixel_sha256"] == sorted(
        pixel_sha256(load_grayscale_file(REVIEW_IMAGES[label][0].read_bytes())) for label in ("pneumonia", "normal")
    )
    assert lineage["review_hospitals"] == {"st-marys": {"train": 2, "holdout": 0}}  # never Riverside
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert lineage["review_data_sha256"] == manifest["data_sha256"]

    # The comparison the gate reads is a real evaluation of both on the same images.
    comparison = candidate.metrics["comparison"]
    locked = retraining.locked_validation(
        registry.resolve_weights_path(active_model).parent / retraining.SPLIT_FILE, settings.TRAINING_DATA_DIR
    )
    assert comparison["locked_validation_images"] == len(locked) == len(locked_files)
    assert comparison["candidate"] == retraining.evaluate_samples(registry.get_engine(candidate), locked)
    assert comparison["active"] == retraining.evaluate_samples(registry.get_engine(active_model), locked)
    assert comparison["reviewed_holdout"] == {"images": 0, "candidate": None, "active": None}
    assert (
        candidate.threshold
        == json.loads((registry.resolve_weights_path(candidate).parent / "model.json").read_text())["threshold"]
    )
    # Its threshold, calibration and recorded metrics come from the locked set, where the
    # parent's came from, not from a split of images the parent trained on.
    assert candidate.metrics["images"] == len(locked)
    assert {k: v for k, v in candidate.metrics.items() if k != "comparison"} == comparison["candidate"]
    assert comparison["candidate"]["sensitivity"] >= 0.95
    assert (
        f"## Validation metrics (the locked validation set ({len(locked)} images), as the parent's)"
        in (registry.resolve_weights_path(candidate).parent / "model_card.md").read_text()
    )

    card_dir = registry.resolve_weights_path(candidate).parent
    assert json.loads((card_dir / "model_card.json").read_text())["lineage"] == lineage
    assert "## Lineage" in (card_dir / "model_card.md").read_text()
    assert candidate.card["lineage"] == lineage

    events = AuditEvent.objects.filter(pk__gt=before).order_by("id")
    assert [(e.action, e.actor_user) for e in events] == [
        (Action.TRAINING_EXPORTED, superuser),
        (Action.TRAINING_EXPORTED, superuser),  # in the exported hospital's own trail
        (Action.MODEL_REGISTERED, superuser),
        (Action.MODEL_RETRAINED, superuser),
        (Action.MODEL_RETRAINED, superuser),  # in the trail of the hospital whose reviews it learned
    ]
    assert [event.hospital for event in events.filter(action=Action.MODEL_RETRAINED)] == [None, hospital_a]
    retrained = events.last()
    assert retrained.target_id == str(candidate.code)
    assert retrained.detail == {
        "name": "pleura-tiny-ft1",
        "parent": "pleura-tiny",
        "review_examples": 2,
        "reviewed_holdout_examples": 0,
        "review_data_sha256": manifest["data_sha256"],
        "gate_failures": retrained.detail["gate_failures"],
    }
    assert retrained.detail["gate_failures"] == gate_failures(candidate, active_model)

    # Reaching doctors, it is in that hospital's trail too, named in its audit log.
    registry.activate(candidate, actor=superuser)
    promoted = AuditEvent.objects.filter(action=Action.MODEL_PROMOTED, target_id=str(candidate.code)).order_by("id")
    assert list(promoted.values_list("hospital", flat=True)) == [None, hospital_a.pk]


def test_retraining_without_consent_trains_on_no_review(tmp_path, active_model, hospital_a, radiologist):
    review(stored_study(hospital_a, REVIEW_IMAGES["pneumonia"][0]), radiologist, "pneumonia")
    from diagnostics import feedback

    version = feedback.retrain_from_reviews(
        name="pleura-tiny-ft2", export_dir=tmp_path / "export", holdout_fraction=0, epochs=1, batch_size=4
    )
    assert version.training_data["lineage"]["review_examples"] == 0
    assert version.training_data["lineage"]["review_hospitals"] == {}
    trained = _split(version, retraining.FINE_TUNE_SPLIT_FILE)
    assert not any(
        name.split("/")[-1].startswith("rv-") for part in ("train", "val") for name in trained[part]["files"]
    )


def test_a_locked_validation_image_reviewed_as_a_study_is_not_trained_on(
    tmp_path, active_model, hospital_a, radiologist
):
    """The export re-encodes a reviewed study as a PNG, so the file-hash screen never
    recognised a locked image that came back as a study: it was trained on, and then
    flattered the candidate on the gate's own set (learning-loop review)."""
    from diagnostics import feedback
    from tests.mlcore.helpers import SMALL_DATA

    hospital_a.shares_reviews_for_training = True
    hospital_a.save()
    locked_file = _split(active_model)["val"]["files"][0]
    review(stored_study(hospital_a, SMALL_DATA / locked_file), radiologist, "pneumonia")
    review(stored_study(hospital_a, REVIEW_IMAGES["normal"][0], patient_id="MRN-2"), radiologist, "normal")

    version = feedback.retrain_from_reviews(
        name="pleura-tiny-ft3", export_dir=tmp_path / "export", holdout_fraction=0, epochs=1, batch_size=4
    )

    lineage = version.training_data["lineage"]
    assert (lineage["review_examples"], lineage["review_examples_left_out_as_locked"]) == (1, 1)
    trained = _split(version, retraining.FINE_TUNE_SPLIT_FILE)
    reviews = [name for part in ("train", "val") for name in trained[part]["files"] if "/rv-" in name]
    assert reviews == [f"NORMAL/{feedback.export_name(hospital_a.studies.get(patient_id='MRN-2'))}"]


def test_retraining_refuses_an_existing_name_and_leaves_nothing_behind(active_model, loop_settings):
    with pytest.raises(CommandError, match="already exists"):
        call_command("retrain_model", "--name", "pleura-tiny", "--epochs", "1")
    assert ModelVersion.objects.count() == 1
    assert not AuditEvent.objects.filter(action=Action.MODEL_RETRAINED).exists()


def test_retrain_task_has_its_own_queue_is_acknowledged_on_receipt_and_is_idempotent(active_model):
    from config.celery import app
    from mlcore import tasks

    assert app.amqp.router.route({}, tasks.RETRAIN_TASK)["queue"].name == "training"
    # Hours long: acks_late would have Redis deliver it again, beside the running one.
    assert tasks.retrain_model.acks_late is False
    assert tasks.retrain_model.soft_time_limit == tasks.RETRAIN_SOFT_TIME_LIMIT
    # A redelivered message for a candidate that already exists does nothing.
    assert tasks.retrain_model.run("pleura-tiny") is None
    assert not AuditEvent.objects.filter(action=Action.TRAINING_EXPORTED).exists()


def test_a_reviewed_image_an_earlier_generation_learned_is_not_in_the_gates_hold_out(
    tmp_path, active_model, hospital_a, radiologist
):
    """Which patients an export holds out depends on its fraction and the secret key: an
    image one generation was fine-tuned on could be held out by the next export and judge
    the gate on what the model had learned (ML review)."""
    from diagnostics import feedback
    from mlcore.preprocessing import load_grayscale_file, pixel_sha256

    hospital_a.shares_reviews_for_training = True
    hospital_a.save()
    learned, fresh = REVIEW_IMAGES["normal"][0], REVIEW_IMAGES["pneumonia"][0]
    review(stored_study(hospital_a, learned, patient_id="MRN-1"), radiologist, "normal")
    review(stored_study(hospital_a, fresh, patient_id="MRN-2"), radiologist, "pneumonia")
    learned_pixels = pixel_sha256(load_grayscale_file(learned.read_bytes()))
    active_model.training_data = {**active_model.training_data, "lineage": {"review_pixel_sha256": [learned_pixels]}}
    active_model.save(update_fields=["training_data"])

    version = feedback.retrain_from_reviews(
        name="pleura-tiny-ft4", export_dir=tmp_path / "export", holdout_fraction=0.999, epochs=1, batch_size=4
    )

    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert manifest["holdout"]["normal"] + manifest["holdout"]["pneumonia"] == 2  # both held out by this export
    lineage = version.training_data["lineage"]
    assert (lineage["reviewed_holdout_examples"], lineage["reviewed_holdout_left_out_as_learned"]) == (1, 1)
    assert version.metrics["comparison"]["reviewed_holdout"]["images"] == 1
    assert lineage["review_pixel_sha256"] == []  # it trained on no review: both were held out
    # The one held-out image is a pneumonia case: no specificity, said so, not "0.0"; and
    # a fine-tune is not "trained from scratch" (learning-loop review).
    card = (registry.resolve_weights_path(version).parent / "model_card.md").read_text()
    hold_out_rows = [row for row in card.splitlines() if row.startswith("| Reviewed hold-out |")]
    assert [row.rsplit("|", 2)[-2].strip() for row in hold_out_rows] == ["not measured", "not measured"]
    assert "Trained from scratch" not in card


def test_a_base_training_image_reviewed_as_a_study_is_not_in_the_gates_hold_out(
    tmp_path, active_model, hospital_a, radiologist
):
    """Both models trained on it: held out, it judged the gate in sample (ML review)."""
    from diagnostics import feedback
    from tests.mlcore.helpers import SMALL_DATA

    hospital_a.shares_reviews_for_training = True
    hospital_a.save()
    trained_file = _split(active_model)["train"]["files"][0]
    review(stored_study(hospital_a, SMALL_DATA / trained_file, patient_id="MRN-1"), radiologist, "pneumonia")
    review(stored_study(hospital_a, REVIEW_IMAGES["normal"][0], patient_id="MRN-2"), radiologist, "normal")

    version = feedback.retrain_from_reviews(
        name="pleura-tiny-ft5", export_dir=tmp_path / "export", holdout_fraction=0.999, epochs=1, batch_size=4
    )

    lineage = version.training_data["lineage"]
    assert (lineage["reviewed_holdout_examples"], lineage["reviewed_holdout_left_out_as_learned"]) == (1, 1)


def test_the_lineage_of_a_fine_tune_on_fewer_images_counts_what_it_read(
    tmp_path, active_model, hospital_a, radiologist
):
    """With --max-images the card said every base image and review was learned from, though
    the fine-tune read a handful and no review (learning-loop review)."""
    from diagnostics import feedback

    hospital_a.shares_reviews_for_training = True
    hospital_a.save()
    review(stored_study(hospital_a, REVIEW_IMAGES["normal"][0], patient_id="MRN-1"), radiologist, "normal")
    review(stored_study(hospital_a, REVIEW_IMAGES["pneumonia"][0], patient_id="MRN-2"), radiologist, "pneumonia")

    version = feedback.retrain_from_reviews(
        name="pleura-tiny-ft6", export_dir=tmp_path / "export", holdout_fraction=0, epochs=1, batch_size=4, max_images=2
    )

    fine_tune = _split(version, retraining.FINE_TUNE_SPLIT_FILE)
    read = fine_tune["train"]["files"] + fine_tune["val"]["files"]
    lineage = version.training_data["lineage"]
    assert len(read) == 4  # two of each class
    assert (lineage["base_examples"], lineage["review_examples"]) == (
        sum("/rv-" not in name for name in read),
        sum("/rv-" in name for name in read),
    )
    assert len(lineage["review_pixel_sha256"]) == lineage["review_examples"]
    assert sorted(_split(version)["train"]["files"]) == sorted(read)


def test_a_files_pixels_are_decoded_once_however_often_they_are_compared(tmp_path, monkeypatch):
    """A review was hashed against the locked set, then again for the lineage; the base
    images at every retraining of a worker's life."""
    import hashlib
    import shutil

    from mlcore import data

    source = sorted((settings.TRAINING_DATA_DIR / "NORMAL").glob("*.jpeg"))[0]
    copy = tmp_path / "copy.jpeg"  # the same bytes elsewhere, as a review linked for training
    shutil.copy(source, copy)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    decoded = []
    load = retraining.load_grayscale_file
    monkeypatch.setattr(retraining, "load_grayscale_file", lambda path: decoded.append(path) or load(path))
    monkeypatch.setattr(retraining, "_PIXELS_OF_FILE", {})

    first = retraining._pixels(data.Sample(source, 0, "p", digest))
    again = retraining._pixels(data.Sample(copy, 0, "p", digest))

    assert (first, again, decoded) == (first, first, [source])
