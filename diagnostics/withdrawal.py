"""Withdrawing a study filed in error: another patient's film, a test shot, a duplicate.

A withdrawn study is kept, as a medical record must be, with who withdrew it, when and
why, and its picture and result stay readable on its own page. It leaves the worklist,
takes no reviews, is not analysed again and never goes into the training export; its
DICOM instance may be sent again and filed under the right patient
(`services.ingest_upload`). Withdrawing is final: a study withdrawn by mistake is sent
again.
"""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from diagnostics.models import Study
from diagnostics.services import SAME_FILM_WARNING
from hospital import audit
from hospital.models import IntegrationKey

REASON_MAX_LENGTH = 300


class WithdrawalRefused(ValueError):
    """The reason given cannot be kept; the message says why, in words."""


def clean_reason(value) -> str:
    reason = " ".join(str(value or "").split())
    if not reason:
        raise WithdrawalRefused("Say why the study is withdrawn (for example: another patient's film).")
    if len(reason) > REASON_MAX_LENGTH:
        raise WithdrawalRefused(f"The reason must be at most {REASON_MAX_LENGTH} characters.")
    if not reason.isprintable() or "\ufffd" in reason:
        raise WithdrawalRefused("The reason may contain printable text only.")
    return reason


@transaction.atomic
def withdraw_study(study: Study, *, reason: str, user=None, key: IntegrationKey | None = None, request=None) -> bool:
    """Withdraw `study` (a conditional update: withdrawn once, by whoever came first).
    True if this call withdrew it; False if it already was, and then nothing changes.
    WithdrawalRefused for a reason that cannot be kept."""
    reason = clean_reason(reason)
    now = timezone.now()
    withdrawn = Study.objects.filter(pk=study.pk, withdrawn_at__isnull=True).update(
        withdrawn_at=now, withdrawn_by=user, withdrawn_by_key=key, withdrawal_reason=reason, updated_at=now
    )
    study.refresh_from_db()
    if not withdrawn:
        return False
    # The reason is free text and may name the patient: it stays on the study, out of the trail.
    audit.record(
        audit.Action.STUDY_WITHDRAWN, request=request, actor=user, key=key, hospital=study.hospital, target=study
    )
    _clear_same_film_warnings(study)
    return True


def _clear_same_film_warnings(withdrawn: Study) -> None:
    """The same-film warning leaves the studies of `withdrawn`'s pixels that no other filed
    study contradicts any more: the right patient's film, warned only because the wrong
    one held the same pixels, goes back into the training export."""
    if not withdrawn.pixel_sha256:
        return
    same_pixels = list(
        Study.objects.for_hospital(withdrawn.hospital)
        .filed()
        .filter(pixel_sha256=withdrawn.pixel_sha256)
        .only("pk", "patient_id", "warnings")
    )
    patients = {study.patient_id for study in same_pixels if study.patient_id}
    for study in same_pixels:
        if SAME_FILM_WARNING in study.warnings and patients <= {study.patient_id}:
            Study.objects.filter(pk=study.pk, warnings=study.warnings).update(
                warnings=[code for code in study.warnings if code != SAME_FILM_WARNING], updated_at=timezone.now()
            )
