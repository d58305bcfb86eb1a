"""The model registry: the Django side of mlcore. The network code itself never imports this."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class ModelVersionQuerySet(models.QuerySet):
    def active(self) -> ModelVersion | None:
        return self.filter(status=ModelVersion.Status.ACTIVE).first()

    def serving(self) -> tuple[ModelVersion | None, ModelVersion | None]:
        """The active version and the newest shadow candidate, in one query: a worker
        asks before every batch, and each round trip to the database is time the model
        does not get."""
        Status = ModelVersion.Status
        active = shadow = None
        for version in self.filter(Q(status=Status.ACTIVE) | Q(status=Status.CANDIDATE, shadow=True)).order_by(
            "-created_at", "-pk"
        ):
            if version.status == Status.ACTIVE:
                active = active or version
            else:
                shadow = shadow or version
        return active, shadow


class ModelVersion(models.Model):
    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    code = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=100, unique=True)
    architecture = models.CharField(max_length=50)
    image_size = models.PositiveIntegerField()
    weights_path = models.CharField(
        max_length=500, help_text="Path of the weights file, relative to MODEL_WEIGHTS_DIR or absolute."
    )
    weights_sha256 = models.CharField(max_length=64)
    threshold = models.FloatField(help_text="Decision threshold on the calibrated probability.")
    temperature = models.FloatField(default=1.0, help_text="Calibration: probability = sigmoid(logit / T + bias).")
    logit_bias = models.FloatField(default=0.0, help_text="Calibration offset (see temperature).")
    metrics = models.JSONField(default=dict, blank=True)
    training_data = models.JSONField(default=dict, blank=True)
    card = models.JSONField(default=dict, blank=True)
    parent = models.ForeignKey("self", on_delete=models.PROTECT, null=True, blank=True, related_name="children")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.CANDIDATE)
    # A shadow candidate runs silently beside the active model on new studies.
    shadow = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    objects = ModelVersionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["status"], condition=Q(status="active"), name="exactly_one_active_model_version"
            )
        ]

    def __str__(self) -> str:
        return self.name
