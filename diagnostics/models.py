from __future__ import annotations

import uuid
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Cast, Upper
from django.utils import timezone

from hospital.tenancy import TenantQuerySet


def _original_path(study: Study, filename: str) -> str:
    # Storage names never contain anything the uploader chose: `filename` is chosen by
    # diagnostics.services ("original", or "original-<random>" for a copy sent again).
    stem = filename.split(".", 1)[0]
    return f"studies/{study.hospital.code}/{study.code}/{stem}.{study.original_format or 'bin'}"


def _display_path(study: Study, filename: str) -> str:
    # `filename` is chosen by diagnostics.services (display-<random>.png), never by a user.
    return f"studies/{study.hospital.code}/{study.code}/{filename}"


def _heatmap_path(prediction: Prediction, filename: str) -> str:
    study = prediction.study
    # `filename` is chosen by diagnostics.pipeline (<random>.png), never by a user.
    return f"studies/{study.hospital.code}/{study.code}/heatmap-{prediction.model_version.code}-{filename}"


class Label(models.TextChoices):
    NORMAL = "normal", "Normal"
    PNEUMONIA = "pneumonia", "Pneumonia"


class StudyQuerySet(TenantQuerySet):
    def filed(self) -> StudyQuerySet:
        """Studies not withdrawn as filed in error."""
        return self.filter(withdrawn_at__isnull=True)


class Study(models.Model):
    """One radiograph sent by a doctor or an EMR system, owned by one hospital."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        PROCESSING = "processing", "Processing"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    class Source(models.TextChoices):
        PORTAL = "portal", "Portal upload"
        API = "api", "REST API"
        DICOMWEB = "dicomweb", "DICOMweb STOW-RS"

    class Format(models.TextChoices):
        DICOM = "dcm", "DICOM"
        PNG = "png", "PNG"
        JPEG = "jpg", "JPEG"

    class Failure(models.TextChoices):
        """Why the pipeline failed a study: what decides whether another try can mend it
        (the text shown to doctors is `failure_reason`). Also the `reason` label of the
        failures metric."""

        UNDECODABLE = "undecodable", "Pixel data undecodable"
        MISSING_FILE = "missing_file", "Stored file missing"
        INFERENCE_ERROR = "inference_error", "Model error"
        GAVE_UP = "gave_up", "Too many attempts"

    hospital = models.ForeignKey("hospital.Hospital", on_delete=models.PROTECT, related_name="studies")
    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)

    # PHI: never logged, never in URLs, metrics or audit details.
    patient_id = models.CharField("patient ID / MRN", max_length=64, blank=True)
    patient_name = models.CharField(max_length=200, blank=True)
    patient_birth_date = models.DateField(null=True, blank=True)
    patient_sex = models.CharField(max_length=16, blank=True)

    accession_number = models.CharField(max_length=64, blank=True, db_index=True)
    study_instance_uid = models.CharField(max_length=64, blank=True)
    series_instance_uid = models.CharField(max_length=64, blank=True)
    sop_instance_uid = models.CharField(max_length=64, blank=True)
    sop_class_uid = models.CharField(max_length=64, blank=True)
    modality = models.CharField(max_length=16, blank=True)
    body_part = models.CharField(max_length=64, blank=True)
    view_position = models.CharField(max_length=16, blank=True)
    study_date = models.DateField(null=True, blank=True)

    source = models.CharField(max_length=10, choices=Source.choices)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    uploaded_by_key = models.ForeignKey(
        "hospital.IntegrationKey", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    # The `Idempotency-Key` header of the API request that stored this study: a request
    # sent again with it (an EMR retrying after a timeout) gets this study back instead of
    # storing a second copy, which DICOM's SOP Instance UID prevents but PNG and JPEG
    # carry nothing to prevent. Unique within the hospital.
    idempotency_key = models.CharField(max_length=128, blank=True)

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED, db_index=True)
    failure_reason = models.CharField(max_length=500, blank=True)
    failure_code = models.CharField(
        max_length=20,
        choices=Failure.choices,
        blank=True,
        help_text="Why the analysis failed, as a code. `missing_file` and `undecodable`: only sending the "
        "image again can mend it. The others: sending it again, or Analyse again in the portal, may.",
    )
    # Codes of reasons the image is outside the model's intended use (see services).
    warnings = models.JSONField(default=list, blank=True)
    # Times the pipeline has handed this study to a worker; bounded by the sweeper.
    attempts = models.PositiveSmallIntegerField(default=0)
    # The Celery message (task id) holding the study while it is `processing`. Only a
    # redelivery of that same message (its worker died) may take the study over.
    claimed_by = models.CharField(max_length=64, blank=True)

    # The stored original and what was learned from it.
    original_file = models.FileField(upload_to=_original_path, max_length=300)
    original_format = models.CharField(max_length=4, choices=Format.choices)
    original_sha256 = models.CharField(max_length=64)
    original_size = models.PositiveBigIntegerField()
    transfer_syntax_uid = models.CharField(max_length=64, blank=True)
    photometric_interpretation = models.CharField(max_length=16, blank=True)
    rows = models.PositiveIntegerField(null=True, blank=True)
    columns = models.PositiveIntegerField(null=True, blank=True)
    # sha256 of the decoded grayscale pixels: the same image sent twice (even as PNG
    # once and DICOM once) gets the same prediction without recomputing it.
    pixel_sha256 = models.CharField(max_length=64, blank=True)
    display_image = models.FileField(upload_to=_display_path, max_length=300, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    # When the sweeper last sent a queued study's message again (it may have been lost, or
    # the study waits in a backlog): once per PIPELINE_STUCK_SECONDS, and no attempt is
    # counted, since no worker has tried it.
    resent_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # Filed in error (another patient's film, a test shot): kept, as a medical record must
    # be, but out of the worklist, reviews and training, and its instance free to be sent
    # again under the right patient (diagnostics.withdrawal).
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    # No index on these: nothing looks studies up by who withdrew them, and building one
    # would stop uploads while it is built (config/concurrent_index.py).
    withdrawn_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    withdrawn_by_key = models.ForeignKey(
        "hospital.IntegrationKey", on_delete=models.PROTECT, null=True, blank=True, related_name="+", db_index=False
    )
    # A default in the database too: the previous release, still serving while this one's
    # migrations run, inserts studies without the column (operator review).
    withdrawal_reason = models.CharField(max_length=300, blank=True, default="", db_default="")

    objects = StudyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "studies"
        constraints = [
            # A withdrawn study's instance may be filed again, under the right patient.
            models.UniqueConstraint(
                fields=["hospital", "sop_instance_uid"],
                condition=~Q(sop_instance_uid="") & Q(withdrawn_at__isnull=True),
                name="one_filed_study_per_sop_instance_per_hospital",
            ),
            models.UniqueConstraint(
                fields=["hospital", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="one_study_per_idempotency_key_per_hospital",
            ),
        ]
        indexes = [
            models.Index(fields=["hospital", "status"]),
            models.Index(fields=["hospital", "-created_at"]),
            # The pipeline's reuse lookup: identical pixels within one hospital.
            models.Index(fields=["hospital", "pixel_sha256"]),
            # An EMR following changes (the API's `updated_since`): without it each poll read
            # the hospital's whole table (docs/benchmarks.md, seventeenth stop).
            models.Index(fields=["hospital", "updated_at"]),
            # The API's search: by accession number, or by the DICOM study an EMR sent.
            models.Index(fields=["hospital", "accession_number"]),
            models.Index(fields=["hospital", "study_instance_uid"]),
            # The worklist's search, in any case (`WorklistFilterForm`): without them it read
            # every study of the hospital (325 ms over 300,000; scale review).
            models.Index(
                F("hospital"), Upper(Cast("accession_number", models.TextField())), name="study_accession_any_case"
            ),
            models.Index(F("hospital"), Upper(Cast("patient_id", models.TextField())), name="study_patient_any_case"),
        ]

    def __str__(self) -> str:
        return f"Study {self.code}"

    @property
    def is_withdrawn(self) -> bool:
        return self.withdrawn_at is not None

    @property
    def waits_longer_than_usual(self) -> bool:
        """Queued, or in a worker, longer than the sweeper lets a study wait: a study queued
        for hours through an outage read "Waiting for analysis" like one queued a second
        ago (portal review)."""
        since = self.started_at if self.status == self.Status.PROCESSING else self.queued_at
        if self.status not in (self.Status.QUEUED, self.Status.PROCESSING) or since is None:
            return False
        return timezone.now() - since > timedelta(seconds=settings.PIPELINE_STUCK_SECONDS)


class PredictionQuerySet(models.QuerySet):
    def shown(self) -> PredictionQuerySet:
        """Predictions doctors may see: never a shadow candidate's."""
        return self.filter(is_shadow=False)


class Prediction(models.Model):
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="predictions")
    model_version = models.ForeignKey("mlcore.ModelVersion", on_delete=models.PROTECT, related_name="predictions")
    probability = models.FloatField()
    label = models.CharField(max_length=10, choices=Label.choices)
    threshold = models.FloatField()
    heatmap = models.FileField(upload_to=_heatmap_path, max_length=300, blank=True)
    device = models.CharField(max_length=32)
    latency_ms = models.FloatField()
    batch_size = models.PositiveSmallIntegerField(default=1)
    is_shadow = models.BooleanField(default=False)
    reused_from = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PredictionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["study", "model_version"], name="one_prediction_per_study_and_model")
        ]

    def __str__(self) -> str:
        return f"{self.label} {self.probability:.3f} ({self.model_version})"


class Review(models.Model):
    """A radiologist's current verdict on a study; earlier versions are kept as revisions."""

    class Verdict(models.TextChoices):
        AGREE = "agree", "Agree with the model"
        DISAGREE = "disagree", "Disagree with the model"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="reviews")
    radiologist = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews")
    prediction = models.ForeignKey(Prediction, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    correct_label = models.CharField(max_length=10, choices=Label.choices)
    note = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        constraints = [
            models.UniqueConstraint(fields=["study", "radiologist"], name="one_current_review_per_radiologist")
        ]

    def __str__(self) -> str:
        return f"{self.get_verdict_display()} ({self.correct_label})"


class ReviewRevision(models.Model):
    """History of a review: one row per save, never changed."""

    review = models.ForeignKey(Review, on_delete=models.CASCADE, related_name="revisions")
    verdict = models.CharField(max_length=10, choices=Review.Verdict.choices)
    correct_label = models.CharField(max_length=10, choices=Label.choices)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.verdict} ({self.correct_label}) at {self.created_at:%Y-%m-%d %H:%M}"
