"""The study resource as EMR systems see it: status, the shown prediction, reviews, warnings.

Patient identifiers are never echoed back: the caller already has them, and responses
end up in integration logs.
"""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from diagnostics import imaging
from diagnostics.models import Label, Prediction, Review, Study


class PredictionSerializer(serializers.ModelSerializer):
    label = serializers.ChoiceField(
        choices=Label.choices, help_text="`pneumonia` when `probability` is at least `threshold`, else `normal`."
    )
    probability = serializers.FloatField(
        help_text="Calibrated probability of pneumonia (0 to 1), not a confidence in `label`: a normal result "
        "can have a probability well above 0.5."
    )
    threshold = serializers.FloatField(
        help_text="The model version's operating point, chosen for sensitivity (often far below 0.5): compare "
        "`probability` with it, never with 0.5."
    )
    model_version = serializers.CharField(source="model_version.name", help_text="The model version that made it.")
    completed_at = serializers.DateTimeField(source="created_at")
    heatmap_url = serializers.SerializerMethodField(
        help_text="Where the heatmap (PNG) is read with the same credentials; null when the model drew none."
    )

    class Meta:
        model = Prediction
        fields = ["label", "probability", "threshold", "model_version", "completed_at", "heatmap_url"]

    def get_heatmap_url(self, prediction: Prediction) -> str | None:
        if not prediction.heatmap:
            return None
        return reverse("api:study-heatmap", kwargs={"code": self.context["study_code"]})


class ReviewSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="code")
    radiologist = serializers.SerializerMethodField()

    class Meta:
        model = Review
        fields = ["id", "radiologist", "verdict", "correct_label", "note", "created_at", "updated_at"]

    def get_radiologist(self, review: Review) -> str:
        return review.radiologist.get_full_name() or review.radiologist.email


class WarningSerializer(serializers.Serializer):
    # Named in the schema: three codes came in this release, and an integrator matching
    # codes had no list to read them from.
    code = serializers.ChoiceField(
        choices=imaging.WARNING_CHOICES,
        help_text="Why the result is outside what the model was validated on, or needs a check; each study with "
        "a warning is left out of the training export.",
    )
    message = serializers.CharField()


class StudySerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="code", read_only=True)
    updated_at = serializers.DateTimeField(
        read_only=True,
        help_text="When anything shown here last changed: status, prediction, reviews. To read what changed "
        "since your last read, pass the largest `updated_at` you have seen, less a minute, as `updated_since`: "
        "a change is stored a moment after its time is taken, so the margin keeps one from being missed, "
        "and a few studies are read twice.",
    )
    image_url = serializers.SerializerMethodField(
        help_text="Where the radiograph as Pleura shows it (PNG) is read with the same credentials."
    )
    prediction = serializers.SerializerMethodField()
    reviews = serializers.SerializerMethodField()
    warnings = serializers.SerializerMethodField()
    study_instance_uid = serializers.CharField(
        read_only=True, help_text="The DICOM Study Instance UID it was sent with; empty for a PNG or JPEG."
    )
    series_instance_uid = serializers.CharField(read_only=True, help_text="Its DICOM Series Instance UID, or empty.")
    sop_instance_uid = serializers.CharField(
        read_only=True,
        help_text="Its DICOM SOP Instance UID, or empty: each instance Pleura receives is a study of its own, "
        "so the views of one DICOM study are told apart by it.",
    )

    withdrawn_at = serializers.DateTimeField(
        read_only=True,
        allow_null=True,
        help_text="When the study was withdrawn as filed in error (POST .../withdraw/), or null. A withdrawn "
        "study is kept, but takes no reviews and is never used for training; its instance may be sent again, "
        "under the right patient, as a new study.",
    )
    withdrawal_reason = serializers.CharField(read_only=True, help_text="Why it was withdrawn, or empty.")

    class Meta:
        model = Study
        fields = [
            "id",
            "status",
            "failure_reason",
            "failure_code",
            "accession_number",
            "study_instance_uid",
            "series_instance_uid",
            "sop_instance_uid",
            "created_at",
            "updated_at",
            "image_url",
            "prediction",
            "reviews",
            "warnings",
            "withdrawn_at",
            "withdrawal_reason",
        ]
        # All of it is Pleura's to set: read-only, and so required in the schema's answers, where
        # typed clients made `status` optional and writable (EMR review).
        read_only_fields = fields

    def get_image_url(self, study: Study) -> str:
        return reverse("api:study-image", kwargs={"code": study.code})

    @extend_schema_field(PredictionSerializer(allow_null=True))
    def get_prediction(self, study: Study) -> dict | None:
        prediction = shown_prediction(study)
        return PredictionSerializer(prediction, context={"study_code": study.code}).data if prediction else None

    @extend_schema_field(ReviewSerializer(many=True))
    def get_reviews(self, study: Study) -> list[dict]:
        reviews = getattr(study, "current_reviews", None)
        if reviews is None:
            reviews = study.reviews.select_related("radiologist")
        return ReviewSerializer(reviews, many=True).data

    @extend_schema_field(WarningSerializer(many=True))
    def get_warnings(self, study: Study) -> list[dict]:
        return imaging.describe_warnings(study.warnings)


def shown_prediction(study: Study) -> Prediction | None:
    """The newest non-shadow prediction; uses the list view's prefetch when present."""
    prefetched = getattr(study, "shown_predictions", None)
    if prefetched is not None:
        return prefetched[0] if prefetched else None
    return study.predictions.shown().select_related("model_version").order_by("-created_at", "-id").first()


class StudyUploadSerializer(serializers.Serializer):
    """The multipart form of an upload (documentation and field validation only)."""

    file = serializers.FileField(help_text="The radiograph: PNG, JPEG or DICOM (type is detected from content).")
    patient_id = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text="Fills in a DICOM header without a Patient ID; one that contradicts the header's is refused (409).",
    )
    accession_number = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        help_text="Replaces the DICOM header's accession number. An instance sent again under another "
        "accession number than its study's is refused (409).",
    )


class WithdrawalSerializer(serializers.Serializer):
    """The body of a withdrawal (documentation; the view reads it itself)."""

    reason = serializers.CharField(
        max_length=300, help_text='Why the study is withdrawn, for example "another patient\'s film".'
    )


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class StudySearchSerializer(serializers.Serializer):
    """The search's filters, as the schema and OPTIONS describe them (the view reads them
    itself: each is refused with its own words)."""

    accession_number = serializers.CharField(required=False, help_text="Only studies with it.")
    status = serializers.ChoiceField(Study.Status.values, required=False)
    study_instance_uid = serializers.CharField(
        required=False, help_text="Only the instances of this DICOM study (0020,000D) Pleura received."
    )
    sop_instance_uid = serializers.CharField(
        required=False, help_text="Only the study made from this DICOM instance (0008,0018)."
    )
