"""Business operations on studies. Views and API endpoints call these; nothing here
knows about HTTP beyond the optional `request` passed through to the audit trail."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable
from functools import partial

from django.db import DatabaseError, IntegrityError, transaction
from django.db.models import F
from django.db.models.fields.files import FieldFile
from django.utils import timezone

from config.db import insert_together
from diagnostics import imaging, media, metrics, tasks
from diagnostics.dicom import IDENTIFIER_MAX_LENGTH, identifier_rule_broken
from diagnostics.imaging import DecodedImage, RejectedUpload, StorageUnavailable
from diagnostics.media import StoredImageUnavailable
from diagnostics.models import Study
from hospital import audit
from hospital.audit import Action, Outcome
from hospital.models import AuditEvent, Hospital, IntegrationKey

logger = logging.getLogger(__name__)

# Patient IDs and accession numbers: printable, no control characters (they end up in
# DICOM headers, HL7 messages and CSV exports). Not ASCII only: a DICOM header in
# ISO_IR 100 or UTF-8 stores "ACC-é1", which a search refused for ever (EMR review).
_IDENTIFIER_LABELS = {"patient_id": "patient ID", "accession_number": "accession number"}


def ingest_upload(
    *,
    hospital: Hospital,
    data: bytes,
    source: str,
    user=None,
    key: IntegrationKey | None = None,
    patient_id: str = "",
    accession_number: str = "",
    request=None,
    dicom_only: bool = False,
    study_instance_uid: str = "",
    idempotency_key: str = "",
) -> tuple[Study, bool]:
    """Validate, decode and store one uploaded file as a queued study of `hospital`.

    Returns (study, queued): queued is True when this upload queued the study for
    prediction. Posting the same SOP Instance UID to the same hospital again returns the
    existing study with queued=False, unless that study failed: then the copy sent again
    replaces its file and the study is queued anew (`_queue_again`), as its failure
    message asks. Every refusal raises `RejectedUpload` after being audited; nothing
    already stored is touched by it.
    `dicom_only` refuses PNG and JPEG (DICOMweb takes DICOM instances only);
    `study_instance_uid` refuses an instance of any other study (STOW-RS to one study).
    `idempotency_key` names the request: sent again with it, the same file and identifiers
    get the study it stored (queued=False) and are not decoded again (`_sent_with_key`),
    unless that study failed: then it is a failed study sent again.
    """
    audit_context = {"request": request, "actor": user, "key": key, "hospital": hospital}
    try:
        patient_id = clean_identifier(patient_id, "patient_id")
        accession_number = clean_identifier(accession_number, "accession_number")
        request_sent_before = _sent_with_key(hospital, idempotency_key, data, patient_id, accession_number)
        # A failed study is answered like a failed instance sent again (below): its
        # failure message asks for the image again, and a retry that only echoed
        # "failed" would never mend a missing file.
        if request_sent_before is not None and request_sent_before.status != Study.Status.FAILED:
            _audit_uploaded(request_sent_before, audit_context, source=source, created=False, replayed=True)
            return request_sent_before, False
        if dicom_only and imaging.sniff(data) != Study.Format.DICOM:
            raise RejectedUpload(415, "Only DICOM instances are accepted here, not PNG or JPEG images.")
        decoded = imaging.decode_upload(data)
        imaging.check_content(decoded.gray)
        if decoded.identifier_problem:
            raise RejectedUpload(422, decoded.identifier_problem)
        if study_instance_uid and decoded.metadata.get("study_instance_uid") != study_instance_uid:
            raise imaging.OtherStudy
        _check_typed_patient(decoded, patient_id)
        sent_before = request_sent_before or _existing(hospital, decoded, patient_id, accession_number)
        if sent_before is not None and not _same_instance(sent_before, decoded, patient_id, accession_number):
            raise imaging.InstanceConflict
        same_film = [] if sent_before is not None else _same_film_of_other_patients(hospital, decoded, patient_id)
        if same_film:
            decoded.warnings.append(SAME_FILM_WARNING)
        if _moves_to_another_order(sent_before, accession_number):
            raise imaging.AccessionConflict
    except RejectedUpload as exc:
        _audit_rejected(exc, audit_context, source=source, size=len(data))
        raise
    build = partial(
        _build_study, hospital, decoded, data, source=source, user=user, key=key, patient_id=patient_id,
        accession=accession_number, idempotency_key=idempotency_key,
    )  # fmt: skip
    # A copy sent again refreshes what its header says, but an identifier someone typed
    # for the study is replaced only by one typed for the copy: the same instance's header
    # says what it said the first time, and an empty field says nothing.
    typed = [name for name, value in (("patient_id", patient_id), ("accession_number", accession_number)) if value]
    refreshed = [*(name for name in decoded.metadata if name not in _TYPED), *typed]
    try:
        study, queued = _store_unless_sent_before(
            sent_before, build, data, audit_context, source=source, refreshed=refreshed,
            same_instance=partial(
                _same_instance, decoded=decoded, typed_patient_id=patient_id, typed_accession=accession_number
            ),
            typed={"patient_id": patient_id, "accession_number": accession_number},
        )  # fmt: skip
    except (
        StorageUnavailable,
        imaging.InstanceConflict,
        imaging.AccessionConflict,
        imaging.IdempotencyKeyReused,
    ) as exc:
        _audit_rejected(exc, audit_context, source=source, size=len(data))
        raise
    if queued:
        metrics.STUDIES_RECEIVED.labels(source=source).inc()
    if same_film and SAME_FILM_WARNING in study.warnings:
        _flag_same_film(same_film)
        settle_same_film_warnings(hospital.pk, study.pixel_sha256)  # withdrawn meanwhile
    return study, queued


def _store_unless_sent_before(
    existing: Study | None, build: Callable[[], Study], data: bytes, audit_context: dict, *, source: str,
    refreshed: list[str], same_instance: Callable[[Study], bool], typed: dict[str, str],
) -> tuple[Study, bool]:  # fmt: skip
    """Store the study `build` makes and its file, unless its instance was sent before
    (`existing`): then the study sent before, queued anew if it had failed, with the
    identifiers `typed` for the copy where it has none. Returns (study, queued). `build`
    hashes the file and its pixels, so a study sent before and not failed, as an EMR's
    resends are, is answered without it."""
    if existing is not None and existing.status == Study.Status.FAILED and not existing.is_withdrawn:
        if _queue_again(existing, build(), data, audit_context, refreshed=refreshed):
            return existing, True
        existing.refresh_from_db()  # another request queued it first, under the order it typed
        if _moves_to_another_order(existing, typed.get("accession_number", "")):
            raise imaging.AccessionConflict  # this one's typed number was dropped (code review)
    if existing is None:
        study = build()
        try:
            return _store(study, data, audit_context), True
        except _DuplicateInstance:
            # Another request stored this request or this instance between our checks and
            # our insert: the same request (a retry sent before the first was answered) gets
            # its study; the same instance must be a copy, or it is another patient's (409).
            existing = _sent_with_key(
                study.hospital, study.idempotency_key, data, study.patient_id, study.accession_number
            )
            if existing is None:
                existing = (
                    Study.objects.for_hospital(study.hospital).filed().get(sop_instance_uid=study.sop_instance_uid)
                )
                if not same_instance(existing):
                    raise imaging.InstanceConflict from None
                if _moves_to_another_order(existing, typed.get("accession_number", "")):
                    raise imaging.AccessionConflict from None
    filled = [] if existing.is_withdrawn else _fill_in_identifiers(existing, typed)
    _audit_uploaded(existing, audit_context, source=source, created=False, **({"filled_in": filled} if filled else {}))
    return existing, False


def _fill_in_identifiers(study: Study, typed: dict[str, str]) -> list[str]:
    """The names of the identifiers typed for a copy that its study lacked, now its own.
    A radiograph first sent with no patient ID, then again with one, was answered "already
    received" with the ID dropped: the worklist never found it under that patient (UX
    review). Only a blank is filled (a conditional update), never an identifier replaced:
    one that contradicts the study's patient is refused before this (`_same_instance`)."""
    filled = []
    for name, value in typed.items():
        blank = Study.objects.filter(pk=study.pk, **{name: ""})
        if value and not getattr(study, name) and blank.update(**{name: value, "updated_at": timezone.now()}):
            setattr(study, name, value)
            filled.append(name)
    return filled


def _sent_with_key(
    hospital: Hospital, idempotency_key: str, data: bytes, patient_id: str, accession: str
) -> Study | None:
    """The study an earlier request with this Idempotency-Key stored, if any; a key used
    before for another file or other typed identifiers is refused (422): answered with
    the earlier study, a new upload that reused a key would be lost without a word."""
    if not idempotency_key:
        return None
    study = Study.objects.for_hospital(hospital).filter(idempotency_key=idempotency_key).first()
    if study is None:
        return None
    same_request = study.original_sha256 == hashlib.sha256(data).hexdigest() and all(
        not typed or typed == stored
        for typed, stored in ((patient_id, study.patient_id), (accession, study.accession_number))
    )
    if not same_request:
        raise imaging.IdempotencyKeyReused
    return study


def _check_typed_patient(decoded: DecodedImage, typed: str) -> None:
    """A typed patient ID may fill in a header without one, never contradict it: kept with
    the header's patient name, it filed one patient's film under another's ID (the upload
    page keeps the ID typed for the files before)."""
    in_header = decoded.metadata.get("patient_id", "")
    if typed and in_header and typed != in_header:
        raise imaging.PatientMismatch


def _same_instance(study: Study, decoded: DecodedImage, typed_patient_id: str, typed_accession: str = "") -> bool:
    """Whether an upload with `study`'s SOP Instance UID is a copy of it: the same pixels,
    patient and study wherever both say. Colliding UIDs happen (a misconfigured modality,
    a tool that resets UIDs); answered with the study sent before, a copy of another
    patient's image got the first patient's result, or replaced a failed study's file."""
    header = decoded.metadata
    pairs = [
        (study.pixel_sha256, decoded.pixel_sha256),
        (study.patient_id, typed_patient_id or header.get("patient_id", "")),
        (study.patient_name, header.get("patient_name", "")),
        (study.study_instance_uid, header.get("study_instance_uid", "")),
    ]
    if study.is_withdrawn:
        # Withdrawn, nothing is filled in any more: an identifier it lacked or another one
        # (the right patient's, the right order's) is the film filed anew, not the withdrawn
        # record written over; one left blank, as in the first message, is still a copy
        # (diff review: an EMR repeating that message filed the error again).
        accession = (study.accession_number, typed_accession or header.get("accession_number", ""))
        return all(not sent or stored == sent for stored, sent in [*pairs, accession])
    return all(not stored or not sent or stored == sent for stored, sent in pairs)


# One film filed under two patients: a PNG or JPEG has no SOP Instance UID to catch it by,
# and one film uploaded for three patients was filed under each, the later ones given the
# first one's result, with no word (portal review). Refused, the right patient's film could
# not be analysed while the wrong one had it (diff review): both are taken and both say
# so, neither goes into the training export, and withdrawing the wrong one
# (diagnostics.withdrawal) takes the warning off the right one.
SAME_FILM_WARNING = "same_film_other_patient"


def _same_film_of_other_patients(hospital: Hospital, decoded: DecodedImage, typed_patient_id: str) -> list[int]:
    """The hospital's studies of these pixels under another patient ID. A study or an
    upload without a patient ID contradicts none."""
    patient_id = typed_patient_id or decoded.metadata.get("patient_id", "")
    if not patient_id:
        return []
    same_pixels = Study.objects.for_hospital(hospital).filed().filter(pixel_sha256=decoded.pixel_sha256)
    return list(same_pixels.exclude(patient_id="").exclude(patient_id=patient_id).values_list("pk", flat=True))


def _flag_same_film(study_ids: list[int]) -> None:
    """Add the warning to these studies, each unless it has it (a conditional update, as
    their warnings read)."""
    for study in Study.objects.filter(pk__in=study_ids).only("pk", "warnings"):
        if SAME_FILM_WARNING not in study.warnings:
            Study.objects.filter(pk=study.pk, warnings=study.warnings).update(
                warnings=[*study.warnings, SAME_FILM_WARNING], updated_at=timezone.now()
            )


def settle_same_film_warnings(hospital_id: int, pixel_sha256: str) -> int:
    """Take the same-film warning off the filed studies of these pixels that no other filed
    study contradicts any more (the others under another patient ID were withdrawn);
    returns how many. Asked after an upload that found the warning, and after a
    withdrawal and its commit: whichever of the two commits last sees the other, where one
    withdrawal racing the right patient's upload left a warning nothing cleared
    (withdrawal review)."""
    if not pixel_sha256:
        return 0
    same_pixels = list(
        Study.objects.filter(hospital_id=hospital_id, pixel_sha256=pixel_sha256)
        .filed()
        .only("pk", "patient_id", "warnings")
    )
    patients = {study.patient_id for study in same_pixels if study.patient_id}
    cleared = 0
    for study in same_pixels:
        if SAME_FILM_WARNING in study.warnings and patients <= {study.patient_id}:
            cleared += Study.objects.filter(pk=study.pk, warnings=study.warnings).update(
                warnings=[code for code in study.warnings if code != SAME_FILM_WARNING], updated_at=timezone.now()
            )
    return cleared


def _moves_to_another_order(sent_before: Study | None, typed_accession: str) -> bool:
    """Whether a copy of a study (not failed) was typed another accession number than the
    study's. It was answered 200 with the old one kept and the new one dropped, though the
    API says a typed accession number replaces the header's (EMR review); a failed study
    sent again takes the one typed, as it takes the new copy."""
    return bool(
        sent_before is not None
        and sent_before.status != Study.Status.FAILED
        and typed_accession
        and sent_before.accession_number
        and typed_accession != sent_before.accession_number
    )


def clean_identifier(value, name: str) -> str:
    """A patient ID or accession number, typed or sent: stripped, or RejectedUpload (400)
    in words naming the field (never echoing the value)."""
    value = "" if value is None else str(value).strip()
    # The words for the doctor who typed it, the field's name for the EMR that sent it.
    field = f"The {_IDENTIFIER_LABELS.get(name, name)} ({name})"
    broken = identifier_rule_broken(value)
    if broken == "too_long":
        raise RejectedUpload(400, f"{field} must be at most {IDENTIFIER_MAX_LENGTH} characters.")
    if broken == "control_characters":
        raise RejectedUpload(400, f"{field} may contain printable characters only, no control characters.")
    if broken == "not_text":
        # A Latin-1 "M\xe9RN" was stored as "M\ufffdRN", which no search finds (ingestion review).
        raise RejectedUpload(400, f"{field} is not valid UTF-8 text: send it encoded as UTF-8.")
    return value


def _existing(hospital: Hospital, decoded: DecodedImage, typed_patient_id: str, typed_accession: str) -> Study | None:
    """The hospital's study of this SOP Instance UID, if it was sent before: the one this
    upload is a copy of, filed or withdrawn (a withdrawn one is answered as it is, and an
    EMR sending it again does not file the error again), else the filed one, which it
    contradicts (409), else none: a withdrawn instance sent with other identifiers (the
    right patient's) is a study of its own (diagnostics.withdrawal).

    Almost every instance is new, so the question is asked as `exists()`, whose query
    names no column: fetching the whole row cost a DICOM upload about 0.86 ms of CPU
    against 0.50 ms (median of 8 blocks of 300 misses on PostgreSQL, one core of the
    2-core VM). The row is read only when there is one.
    """
    sop_uid = decoded.metadata.get("sop_instance_uid", "")
    if not sop_uid:
        return None
    sent_before = Study.objects.for_hospital(hospital).filter(sop_instance_uid=sop_uid)
    if not sent_before.exists():
        return None
    studies = list(sent_before.order_by(F("withdrawn_at").desc(nulls_first=True), "-pk"))
    copy = next((study for study in studies if _same_instance(study, decoded, typed_patient_id, typed_accession)), None)
    filed = next((study for study in studies if not study.is_withdrawn), None)
    return copy or filed


def _build_study(
    hospital: Hospital,
    decoded: DecodedImage,
    data: bytes,
    *,
    source: str,
    user,
    key: IntegrationKey | None,
    patient_id: str,
    accession: str,
    idempotency_key: str,
) -> Study:
    fields = dict(decoded.metadata)
    # Values the caller typed win over the file's header (an EMR knows its own accession).
    if patient_id:
        fields["patient_id"] = patient_id
    if accession:
        fields["accession_number"] = accession
    return Study(
        hospital=hospital,
        source=source,
        uploaded_by=user if getattr(user, "pk", None) else None,
        uploaded_by_key=key,
        idempotency_key=idempotency_key,
        status=Study.Status.QUEUED,
        warnings=list(decoded.warnings),
        original_format=decoded.format,
        original_sha256=hashlib.sha256(data).hexdigest(),
        original_size=len(data),
        pixel_sha256=decoded.pixel_sha256,
        queued_at=timezone.now(),
        **fields,
    )


class _DuplicateInstance(Exception):
    """Another request stored the same SOP Instance UID, or used the same Idempotency-Key, first."""


def _store(study: Study, data: bytes, audit_context: dict) -> Study:
    """Write the original, then the row and its audit event, all or none (queued for
    prediction once they are stored); if anything fails, remove the file written.

    The portal's picture is not drawn here but on first request (`display_image_of`).
    """
    _write_original(study, data)
    try:
        # The row and its audit event in one statement: one round trip, not four.
        insert_together(study, _uploaded_event(study, audit_context, source=study.source, created=True))
    except IntegrityError as exc:
        media.remove_file(study.original_file.storage, study.original_file.name)
        if study.sop_instance_uid or study.idempotency_key:
            raise _DuplicateInstance from exc
        raise
    except BaseException:
        # A database error, or the request ended mid-insert (gunicorn's timeout): the row
        # may have committed all the same.
        _remove_unless_stored(study)
        raise
    # Outside the `try`: with no transaction around it, the queueing runs at once, and the
    # request ended there (gunicorn's timeout, on a hung broker) removed the original of a
    # study already filed, which then failed as "missing file" (reliability review).
    _queue_for_prediction(study)
    return study


def _remove_unless_stored(study: Study, name: str = "") -> None:
    """The database failed, or the request ended: remove the original written (`name`, a
    copy sent again to a failed study) unless its row holds it after all (a write that
    committed, then lost its connection before the answer came). Removed, that study
    failed as "missing file", and the EMR's retry got it back as already stored. If the
    database cannot say, the file stays: an orphan is better than a study without it."""
    stored_as = {"pk": study.pk, "original_file": name} if name else {"code": study.code}
    try:
        stored = Study.objects.filter(**stored_as).exists()
    except DatabaseError:
        logger.warning("study %s: could not tell whether it was stored; its original is kept", study.code)
        return
    if not stored:
        media.remove_file(study.original_file.storage, name or study.original_file.name)


# What a study takes from the file itself, and so takes anew from a copy sent again,
# besides the fields read from its header; and the identifiers a caller may type instead.
_FROM_THE_FILE = ("original_format", "original_sha256", "original_size", "pixel_sha256", "warnings")
_TYPED = ("patient_id", "accession_number")


def _queue_again(failed: Study, resent: Study, data: bytes, audit_context: dict, *, refreshed: list[str]) -> bool:
    """Store the copy of a failed study's instance sent again, and queue the study anew.

    In place, since a SOP Instance UID is one study per hospital: the copy replaces the
    file (a missing or damaged one is why some studies fail), the study's description of
    it, the `refreshed` fields, and its attempts. False if the study is no longer failed:
    another request queued it first, and this copy is removed.
    """
    replaced = [name for name in (failed.original_file.name, failed.display_image.name) if name]
    # The study now answers to the copy's request: a late retry of the first request,
    # whose file this copy replaces, is then recognised by its instance, not refused as
    # a key reused for another file.
    fields = {name: getattr(resent, name) for name in {*_FROM_THE_FILE, *refreshed, "idempotency_key"}}
    for name, value in fields.items():
        setattr(failed, name, value)  # the new file's name follows its format
    _write_original(failed, data, name=f"original-{uuid.uuid4().hex[:12]}")
    storage, written = failed.original_file.storage, failed.original_file.name
    try:
        with transaction.atomic():
            queued = _queue_if_failed(failed, **fields, original_file=written, display_image="")
            if queued:
                _audit_uploaded(failed, audit_context, source=resent.source, created=False, sent_again=True)
    except IntegrityError as exc:
        media.remove_file(storage, written)
        # The copy's Idempotency-Key was taken by another upload since it was looked up:
        # the key was used for another file, as if that upload had come first (diff review).
        # Any other integrity error is not the caller's key, and is raised as it is.
        key = fields.get("idempotency_key", "")
        if (
            key
            and Study.objects.for_hospital(failed.hospital).filter(idempotency_key=key).exclude(pk=failed.pk).exists()
        ):
            raise imaging.IdempotencyKeyReused from exc
        raise
    except BaseException:
        # The request may have ended after the commit: the row would then hold the copy.
        _remove_unless_stored(failed, name=written)
        raise
    if not queued:
        media.remove_file(storage, written)
        return False
    # Outside the `try`, as in `_store`: queued at once where no transaction is open, a
    # request ended there removed the copy the committed row held (diff review).
    # The replaced files first: a request ended while queueing would leave them behind.
    transaction.on_commit(partial(_remove_files, storage, replaced))
    _queue_for_prediction(failed)
    failed.refresh_from_db()
    return True


# Failures another try may mend (a worker lost too often, the model's own error), as
# against a file that is missing or cannot be decoded: only a new copy mends those.
_NEEDS_A_NEW_COPY = (Study.Failure.MISSING_FILE, Study.Failure.UNDECODABLE)


def may_analyse_again(study: Study) -> bool:
    """Whether the portal offers to queue this study again with the file it holds."""
    return (
        study.status == Study.Status.FAILED and study.failure_code not in _NEEDS_A_NEW_COPY and not study.is_withdrawn
    )


def analyse_again(study: Study, *, request=None) -> bool:
    """Queue a failed study again with the file it holds (the portal's Analyse again):
    for a study an EMR sent, the doctor has no copy to send. False if it is no longer
    failed (someone queued it first), or its failure needs a new copy."""
    if not may_analyse_again(study):
        return False
    with transaction.atomic():
        queued = _queue_if_failed(study)
        if queued:
            audit.record(Action.STUDY_ANALYSED_AGAIN, request=request, target=study, failure=study.failure_reason)
            _queue_for_prediction(study)
    study.refresh_from_db()
    return queued


def _queue_if_failed(study: Study, **changes) -> bool:
    """From failed to queued (a conditional update: one request wins), with no failure and
    no attempts; the caller queues it for prediction (`_queue_for_prediction`)."""
    now = timezone.now()
    # Never a withdrawn study: withdrawn while this was asked, it stays as it was left.
    queued = Study.objects.filter(pk=study.pk, status=Study.Status.FAILED, withdrawn_at__isnull=True).update(
        **changes, status=Study.Status.QUEUED, failure_reason="", failure_code="", attempts=0, claimed_by="",
        queued_at=now, resent_at=None, started_at=None, completed_at=None, updated_at=now,
    )  # fmt: skip
    return bool(queued)


def _queue_for_prediction(study: Study) -> None:
    """Hand the study to the workers once the transaction commits (at once outside one)."""
    transaction.on_commit(partial(tasks.enqueue_prediction, study.pk))


def _remove_files(storage, names: list[str]) -> None:
    for name in names:
        media.remove_file(storage, name)


def _write_original(study: Study, data: bytes, name: str = "original") -> None:
    """Store the uploaded bytes, or raise StorageUnavailable having left nothing behind."""
    try:
        # The name holds the study's new code (or a random part), so no other write uses it.
        media.save_as_new(study.original_file, name, data)
    except Exception as exc:  # whatever the backend raises (OSError on disk, botocore on S3)
        logger.error(
            "study %s: the original could not be written to storage (%s)", study.code, type(exc).__name__, exc_info=True
        )
        raise StorageUnavailable from exc


def display_image_of(study: Study) -> FieldFile:
    """The portal's picture of `study` (windowed, at most 1024 px), drawn from the stored
    original on the first request for it; empty if the original is gone or undecodable.
    Raises StoredImageUnavailable (503) when the storage cannot be read or written.

    Uploads used to draw it: 1.8 ms of an upload's 10 ms of CPU, paid while the EMR or
    the doctor waits, for studies an EMR often sends without anyone opening them in the
    portal. The first viewer now pays a few milliseconds instead. Two first requests at
    once both draw it, each under a name of its own; the conditional update keeps one
    file and the other is removed. A picture of an original replaced meanwhile is not kept.
    """
    if study.display_image or not study.original_file:
        return study.display_image
    try:
        gray = imaging.decode_upload(_read_original_for_display(study)).gray
    except (FileNotFoundError, RejectedUpload) as exc:
        logger.warning(
            "study %s: no picture drawn, the original could not be read (%s)", study.code, type(exc).__name__
        )
        return study.display_image
    drawn = study.display_image
    try:
        media.save_as_new(drawn, f"display-{uuid.uuid4().hex[:12]}.png", imaging.display_png(gray))
    except Exception as exc:  # whatever the backend raises (OSError on disk, botocore on S3)
        raise StoredImageUnavailable.because(exc, doing="written") from exc
    # Only if the original is still the one drawn: a failed study sent again meanwhile
    # has a new file, and its picture must be drawn from that (concurrency review).
    drawn_from = Study.objects.filter(pk=study.pk, display_image="", original_file=study.original_file.name)
    if drawn_from.update(display_image=drawn.name):
        return drawn
    media.remove_file(drawn.storage, drawn.name)  # another request stored its picture first, or a new copy came
    study.refresh_from_db(fields=["display_image"])
    return study.display_image


def _read_original_for_display(study: Study) -> bytes:
    try:
        return imaging.read_original(study)
    except FileNotFoundError:
        raise
    except Exception as exc:  # whatever the backend raises (OSError on disk, botocore on S3)
        raise StoredImageUnavailable.because(exc, doing="read") from exc


def record_refused_upload(*, request, hospital: Hospital, source: str, status_code: int, reason: str, **detail) -> None:
    """An upload refused, by the service or before it reached `ingest_upload` (its size,
    media type, body or form); `detail` may name the actor and key, as audit.record takes them."""
    audit.record(
        Action.STUDY_UPLOAD_REJECTED, request=request, hospital=hospital, outcome=Outcome.FAILURE, source=source,
        status_code=status_code, reason=reason, **detail,
    )  # fmt: skip


def _audit_rejected(exc: RejectedUpload, context: dict, *, source: str, size: int) -> None:
    record_refused_upload(**context, source=source, status_code=exc.status_code, reason=exc.detail, size=size)


def _audit_uploaded(study: Study, context: dict, *, source: str, created: bool, **detail) -> None:
    _uploaded_event(study, context, source=source, created=created, **detail).save()


def _uploaded_event(study: Study, context: dict, *, source: str, created: bool, **detail) -> AuditEvent:
    return audit.build(
        Action.STUDY_UPLOADED,
        **context,
        target=study,
        source=source,
        created=created,
        format=study.original_format,
        warnings=list(study.warnings),
        **detail,
    )
