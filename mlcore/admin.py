"""The model registry in the Django admin: platform superusers only, read-only, one audited action.

Versions are registered and promoted with `register_model` / `promote_model` (the gate
lives there); the admin shows them and offers the emergency rollback.
"""

from __future__ import annotations

from django.contrib import admin, messages

from hospital import audit
from hospital.admin import ReadableLookupsMixin
from mlcore import registry
from mlcore.models import ModelVersion


def _is_superuser(request) -> bool:
    return bool(request.user.is_active and request.user.is_superuser)


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadableLookupsMixin, admin.ModelAdmin):
    list_display = ["name", "status", "architecture", "image_size", "threshold", "auc", "sensitivity", "created_at"]
    list_filter = ["status", "architecture"]
    search_fields = ["name", "weights_sha256"]
    ordering = ["-created_at"]
    actions = ["roll_back_to_version"]
    readonly_fields = [
        "name",
        "code",
        "status",
        "shadow",
        "architecture",
        "image_size",
        "weights_path",
        "weights_sha256",
        "threshold",
        "temperature",
        "logit_bias",
        "metrics",
        "training_data",
        "card",
        "parent",
        "created_at",
        "promoted_at",
    ]

    @admin.display(description="ROC AUC")
    def auc(self, version: ModelVersion):
        return version.metrics.get("roc_auc")

    @admin.display(description="sensitivity")
    def sensitivity(self, version: ModelVersion):
        return version.metrics.get("sensitivity")

    def has_module_permission(self, request) -> bool:
        return _is_superuser(request)

    def has_view_permission(self, request, obj=None) -> bool:
        return _is_superuser(request)

    def has_change_permission(self, request, obj=None) -> bool:
        # Every field is read-only; "change" is what the rollback action needs.
        return _is_superuser(request)

    def has_add_permission(self, request) -> bool:
        return False  # register_model checks the weights' hash; the admin cannot.

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # audit events and predictions refer to versions.

    @admin.action(description="Roll back to this version (re-activate it)", permissions=["change"])
    def roll_back_to_version(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to roll back to.", messages.ERROR)
            return
        version = queryset.get()
        if version.status != ModelVersion.Status.RETIRED:
            self.message_user(
                request,
                f"{version.name} is {version.get_status_display().lower()}: only a retired (earlier active) "
                "version can be rolled back to; promote candidates with `manage.py promote_model`.",
                messages.ERROR,
            )
            return
        try:
            registry.activate(
                version,
                actor=request.user,
                action=audit.Action.MODEL_ROLLED_BACK,
                from_status=ModelVersion.Status.RETIRED,
                via="admin",
            )
        except registry.RegistryError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, f"Rolled back: {version.name} is the active model again.", messages.SUCCESS)
