"""Studies in the Django admin: read-only, each hospital admin sees their own hospital's.

Studies change only through the ingestion service and the pipeline, never by hand; the
admin is for operations (status, failures, warnings), so patient identifiers are left
out of it: doctors see them in the portal.
"""

from __future__ import annotations

from django.contrib import admin

from diagnostics.models import Study
from hospital import audit
from hospital.admin import DATE_RANGES, VIEW, AuditedReadsAdmin

OPERATIONAL_FIELDS = [
    "code",
    "hospital",
    "status",
    "failure_code",
    "failure_reason",
    "warnings",
    "attempts",
    "source",
    "uploaded_by",
    "uploaded_by_key",
    "accession_number",
    "modality",
    "body_part",
    "view_position",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "original_format",
    "original_size",
    "original_sha256",
    "pixel_sha256",
    "transfer_syntax_uid",
    "photometric_interpretation",
    "rows",
    "columns",
    "created_at",
    "queued_at",
    "started_at",
    "completed_at",
    "updated_at",
    # Who withdrew it and when; not why, free text that may name the patient.
    "withdrawn_at",
    "withdrawn_by",
    "withdrawn_by_key",
]


@admin.register(Study)
class StudyAdmin(AuditedReadsAdmin):
    listed_action = audit.Action.STUDY_LISTED
    viewed_action = audit.Action.STUDY_VIEWED
    hospital_admin_permissions = frozenset({VIEW})
    superuser_permissions = frozenset({VIEW})
    list_display = ["code", "hospital", "status", "source", "modality", "original_format", "created_at"]
    list_filter = [
        "status", "failure_code", "source", "original_format", ("withdrawn_at", admin.EmptyFieldListFilter), "hospital",
        DATE_RANGES,
    ]  # fmt: skip
    list_select_related = ["hospital"]
    # By codes only: the admin searches by GET, so a term lands in URLs and browser history;
    # the portal's worklist searches accession numbers and patient IDs by POST.
    search_fields = ["=code", "=sop_instance_uid"]
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    fields = OPERATIONAL_FIELDS
    readonly_fields = OPERATIONAL_FIELDS

    def listed_detail(self, rows) -> dict:
        return {"studies": audit.study_codes(rows)}

    def get_fields(self, request, obj=None):
        # A hospital's admin matches a failure to the order by its accession number; a
        # platform operator, who belongs to no hospital, reads every hospital's studies
        # and has no order to match (PHI review), except in a hospital they also administer.
        if self.is_platform_admin(request) and (obj is None or not self.administers(request, obj.hospital_id)):
            return [name for name in OPERATIONAL_FIELDS if name != "accession_number"]
        return OPERATIONAL_FIELDS
