"""Withdrawing a study filed in error: another patient's film, a test shot, a duplicate.

A withdrawn study is kept, as a medical record must be, with who withdrew it, when and
why, and its picture and result stay readable on its own page. It leaves the worklist,
takes no reviews, cannot be sent for analysis again (one already under way finishes, for
the record) and never goes into the training export. Withdrawing is final. Its DICOM
instance sent again with other identifiers (the right patient's) is a study of its own;
an exact copy is answered with the withdrawn study (`services._existing`), so an EMR
sending its message again does not file the error again. A film withdrawn by mistake
comes back under a new SOP Instance UID, or as a PNG or JPEG.
"""

from __future__ import annotations

import unicodedata
from functools import partial

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from diagnostics.models import Study
from diagnostics.services import settle_same_film_warnings
from hospital import audit
from hospital.models import IntegrationKey

REASON_MAX_LENGTH = 300


class WithdrawalRefused(ValueError):
    """The reason given cannot be kept; the message says why, in words."""


def clean_reason(value) -> str:
    # Invisible format characters (a soft hyphen, a zero-width space) come with text pasted
    # from a word processor: dropped, where they refused the reason (UX review).
    visible = "".join(char for char in str(value or "") if unicodedata.category(char) != "Cf")
    reason = " ".join(visible.split())
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
    _lock_same_film(study)
    now = timezone.now()
    withdrawn = Study.objects.filter(pk=study.pk, withdrawn_at__isnull=True).update(
        withdrawn_at=now, withdrawn_by=user, withdrawn_by_key=key, withdrawal_reason=reason, updated_at=now
    )
    study.refresh_from_db()
    if not withdrawn:
        return False
    cleared = settle_same_film_warnings(study.hospital_id, study.pixel_sha256)
    # Again once committed: an upload of these pixels stored meanwhile is seen then.
    transaction.on_commit(partial(settle_same_film_warnings, study.hospital_id, study.pixel_sha256))
    # The reason is free text and may name the patient: it stays on the study, out of the trail.
    audit.record(
        audit.Action.STUDY_WITHDRAWN, request=request, actor=user, key=key, hospital=study.hospital, target=study,
        **({"same_film_warnings_cleared": cleared} if cleared else {}),
    )  # fmt: skip
    return True


def _lock_same_film(study: Study) -> None:
    """Lock the study and the filed studies of its pixels, in the order of their ids: two
    films of one picture withdrawn at once each locked its own row, then waited for the
    other's to clear its warning, and PostgreSQL broke the deadlock with a 503 (withdrawal
    review)."""
    rows = Q(pk=study.pk)
    if study.pixel_sha256:
        rows |= Q(hospital_id=study.hospital_id, pixel_sha256=study.pixel_sha256, withdrawn_at__isnull=True)
    list(Study.objects.filter(rows).select_for_update().order_by("pk").values_list("pk", flat=True))
