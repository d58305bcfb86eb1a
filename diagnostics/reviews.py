"""Radiologists' reviews: one current review per radiologist and study, history kept."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from diagnostics.models import Prediction, Review, ReviewRevision, Study
from hospital import audit


def current_prediction(study: Study) -> Prediction | None:
    """The newest prediction doctors may see (never a shadow model's)."""
    return study.predictions.shown().select_related("model_version").order_by("-created_at", "-id").first()


class ResultChangedMeanwhile(Exception):
    """The study's result is no longer the one the review was given for."""


class StudyWithdrawn(Exception):
    """The study was withdrawn as filed in error: it takes no reviews."""


@transaction.atomic
def save_review(
    *,
    study: Study,
    radiologist,
    verdict: str,
    correct_label: str,
    note: str = "",
    request=None,
    seen_prediction: Prediction | None = None,
) -> tuple[Review, bool]:
    """Create or replace the radiologist's review and append a revision.

    Returns (review, created). The unique constraint on (study, radiologist) makes a
    double submit update the same row instead of creating a second one; the same review
    sent again (a double click) changes nothing, so it is no revision, no audit event, and
    no change for an EMR following `updated_at`.

    The study's row is locked first: two submits at once both found no such review and
    both saved a revision and an event, and a result stored between the caller's check and
    this save got a review given for the one before (code review). With `seen_prediction`,
    ResultChangedMeanwhile if the result is another now; StudyWithdrawn if the study is
    withdrawn.
    """
    locked = Study.objects.select_for_update().filter(pk=study.pk).values_list("withdrawn_at", flat=True)
    if any(withdrawn_at is not None for withdrawn_at in locked):
        raise StudyWithdrawn
    prediction = current_prediction(study)
    if seen_prediction is not None and (prediction is None or prediction.pk != seen_prediction.pk):
        raise ResultChangedMeanwhile
    same = Review.objects.filter(
        study=study, radiologist=radiologist, prediction=prediction, verdict=verdict,
        correct_label=correct_label, note=note,
    ).first()  # fmt: skip
    if same is not None:
        return same, False
    review, created = Review.objects.update_or_create(
        study=study,
        radiologist=radiologist,
        defaults={
            "prediction": prediction,
            "verdict": verdict,
            "correct_label": correct_label,
            "note": note,
        },
    )
    ReviewRevision.objects.create(review=review, verdict=verdict, correct_label=correct_label, note=note)
    # A review changes what the API shows of the study: an EMR reading changes back with
    # `updated_since` must see it, as it sees a prediction.
    Study.objects.filter(pk=study.pk).update(updated_at=timezone.now())
    # The note is free text and may name the patient: it stays out of the audit trail.
    audit.record(
        audit.Action.REVIEW_SAVED,
        request=request,
        actor=radiologist,
        hospital=study.hospital,
        target=study,
        review=str(review.code),
        verdict=verdict,
        correct_label=correct_label,
        created=created,
    )
    return review, created
