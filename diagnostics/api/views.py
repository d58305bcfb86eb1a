"""REST API for studies (`/api/v1/`) and DICOMweb STOW-RS (`/dicomweb/`).

Thin views: the tenant gate is `hospital.api.TenantAPIMixin`, the work is done by
`diagnostics.services` and `diagnostics.dicomweb`. Every error body is {"detail": ...}.
"""

from __future__ import annotations

import base64
import re
import uuid
from datetime import UTC, datetime, time

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db.models import Prefetch, Q, prefetch_related_objects
from django.http import Http404
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import exceptions, generics, status
from rest_framework.pagination import BasePagination, PageNumberPagination
from rest_framework.parsers import BaseParser, FormParser, JSONParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from diagnostics import dicomweb, services
from diagnostics.api.serializers import (
    ErrorSerializer,
    StudySearchSerializer,
    StudySerializer,
    StudyUploadSerializer,
    WithdrawalSerializer,
    shown_prediction,
)
from diagnostics.dicom import is_uid
from diagnostics.imaging import RejectedUpload
from diagnostics.media import protected_file_response
from diagnostics.models import Prediction, Review, Study
from diagnostics.withdrawal import WithdrawalRefused, withdraw_study
from hospital import audit
from hospital.api import IntegrationPrincipal, TenantAPIMixin
from hospital.audit import Action
from hospital.tenancy import NotInThisHospital

# Room for multipart headers and form fields around a file of MAX_UPLOAD_BYTES.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "payload_too_large"


class LengthRequired(exceptions.APIException):
    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_detail = (
        "Send the body with a Content-Length header: a chunked body sent straight to Pleura's application "
        "server (not through its nginx) reaches it empty."
    )
    default_code = "length_required"


def _limit_text() -> str:
    return f"{settings.MAX_UPLOAD_BYTES / (1024 * 1024):g} MB"


def _read_limited(stream, limit: int) -> bytes:
    if stream is None:
        return b""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"The request body is larger than the {_limit_text()} limit.")
    return data


class DicomParser(BaseParser):
    """A raw DICOM file as the body (`Content-Type: application/dicom`)."""

    media_type = "application/dicom"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        return _read_limited(stream, settings.MAX_UPLOAD_BYTES)


class OctetStreamParser(DicomParser):
    """The file itself as an untyped body (`application/octet-stream`, as many interface
    engines send it): its type is judged by its content, as every upload's is."""

    media_type = "application/octet-stream"


class FiltersJSONParser(JSONParser):
    """DRF's JSON parser, with a body nested past Python's recursion limit ("[" * 100000)
    a 400 like any other unreadable JSON, not a 500 (bad-input review)."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise exceptions.ParseError("JSON parse error - the body is nested too deeply.") from exc


RAW_BODY_TYPES = frozenset({DicomParser.media_type, OctetStreamParser.media_type})
# Media types a refusal names; any other is "of this request": a type of the sender's
# own making ("application/x-<patient>") was repeated in the answer and the audit trail
# (security review).
NAMED_MEDIA_TYPES = frozenset(
    {
        "application/dicom", "application/dicom+json", "application/dicom+xml", "application/json",
        "application/octet-stream", "application/pdf", "application/x-www-form-urlencoded", "application/xml",
        "image/jp2", "image/jpeg", "image/png", "multipart/form-data", "multipart/related", "text/html",
        "text/plain", "text/xml",
    }
)  # fmt: skip


class MultipartRelatedParser(BaseParser):
    """A STOW-RS body: the raw bytes, split later with the boundary of the Content-Type."""

    media_type = "multipart/related"

    def parse(self, stream, media_type=None, parser_context=None) -> bytes:
        return _read_limited(stream, settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES)


class DicomJSONRenderer(JSONRenderer):
    media_type = dicomweb.DICOM_JSON_MEDIA_TYPE
    format = "dicom+json"


def _check_content_length(request, limit: int) -> None:
    """Refuse an oversized body from its declared length, before reading any of it."""
    if not request.META.get("CONTENT_LENGTH") and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        # WSGI reads no body without a length: answered "The file is empty." (EMR review).
        raise LengthRequired
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError as exc:
        raise exceptions.ParseError("The Content-Length header is not a number.") from exc
    if length > limit:
        raise PayloadTooLarge(f"The request body is larger than the {_limit_text()} limit.")


def _request_data(request):
    """request.data, with Django's own upload refusals turned into JSON errors."""
    try:
        return request.data
    except RequestDataTooBig as exc:
        raise PayloadTooLarge("The form fields of this request are too large.") from exc
    except (TooManyFieldsSent, TooManyFilesSent) as exc:
        raise exceptions.ParseError("The request has too many form fields or files.") from exc
    # DRF's own words quote the request's header or body, which a sender may have filled
    # with a patient's name (a file name in a Content-Type parameter): answered and
    # audited in words of our own instead.
    except exceptions.UnsupportedMediaType as exc:
        bare = _media_type(request)
        named = f'"{bare}"' if bare.lower() in NAMED_MEDIA_TYPES else "of this request"
        accepted = ", ".join(parser.media_type for parser in request.parsers)
        raise exceptions.UnsupportedMediaType(
            bare, detail=f"The media type {named} is not accepted here; send one of: {accepted}."
        ) from exc
    except exceptions.ParseError as exc:
        raise exceptions.ParseError("The request's body could not be parsed: check its boundary and parts.") from exc


def _media_type(request) -> str:
    """The request's media type without its parameters (which may name a patient's file)."""
    return request.content_type.split(";")[0].strip()


def _caller(request) -> dict:
    if isinstance(request.user, IntegrationPrincipal):
        return {"user": None, "key": request.auth}
    return {"user": request.user, "key": None}


ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Malformed request (empty body, no `file` field, bad filter)."),
    401: OpenApiResponse(ErrorSerializer, description="No credentials, or the integration key is revoked."),
    403: OpenApiResponse(ErrorSerializer, description="Your role does not allow this."),
    404: OpenApiResponse(ErrorSerializer, description="No such study in your hospital."),
    413: OpenApiResponse(ErrorSerializer, description="Larger than MAX_UPLOAD_BYTES or MAX_IMAGE_PIXELS."),
    415: OpenApiResponse(ErrorSerializer, description="Not PNG, JPEG or DICOM (judged by content)."),
    411: OpenApiResponse(
        ErrorSerializer, description="A body sent without a Content-Length (chunked): its size must be known first."
    ),
    422: OpenApiResponse(ErrorSerializer, description="Truncated, corrupt, or a DICOM object that is not an image."),
    429: OpenApiResponse(
        ErrorSerializer,
        description="Too many requests for this integration key; send again after the `Retry-After` seconds.",
    ),
    503: OpenApiResponse(
        ErrorSerializer,
        description="Pleura's database or image storage is unavailable just now; nothing was read or stored. "
        "Try again after the `Retry-After` seconds.",
    ),
}


def errors(*codes: int) -> dict:
    """The ERRORS answers of `codes`, for an operation's documented responses."""
    return {code: ERRORS[code] for code in codes}


STUDY_EXAMPLE = OpenApiExample(
    "A completed study",
    value={
        "id": "4f7c1b9e-2f55-4b0f-9b7e-0c1d2e3f4a5b",
        "status": "completed",
        "failure_reason": "",
        "failure_code": "",
        "accession_number": "ACC-2025-000123",
        "study_instance_uid": "1.2.826.0.1.3680043.8.498.10192837465",
        "series_instance_uid": "1.2.826.0.1.3680043.8.498.10192837466",
        "sop_instance_uid": "1.2.826.0.1.3680043.8.498.10192837467",
        "created_at": "2025-11-03T09:14:07.512Z",
        "updated_at": "2025-11-03T09:14:08.204Z",
        "prediction": {
            "label": "pneumonia",
            "probability": 0.912,
            "threshold": 0.92,
            "model_version": "pleura-resnet18-v1",
            "completed_at": "2025-11-03T09:14:08.204Z",
        },
        "reviews": [],
        "warnings": [],
        "withdrawn_at": None,
        "withdrawal_reason": "",
    },
    response_only=True,
)
QUEUED_EXAMPLE = OpenApiExample(
    "Just uploaded: queued, outside the intended use",
    value={
        "id": "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d",
        "status": "queued",
        "failure_reason": "",
        "failure_code": "",
        "accession_number": "ACC-2025-000124",
        "study_instance_uid": "",
        "series_instance_uid": "",
        "sop_instance_uid": "",
        "created_at": "2025-11-03T09:20:00Z",
        "updated_at": "2025-11-03T09:20:00Z",
        "prediction": None,
        "reviews": [],
        "warnings": [
            {
                "code": "not_chest",
                "message": "The body part examined is not the chest: the model is validated on chest radiographs only.",
            }
        ],
        "withdrawn_at": None,
        "withdrawal_reason": "",
    },
    response_only=True,
    status_codes=["200", "202"],
)
ERROR_EXAMPLE = OpenApiExample(
    "A DICOM object without pixels",
    value={"detail": "This DICOM file (Basic Text SR Storage) has no pixel data: it is not an image."},
    response_only=True,
    status_codes=["422"],
)


def _result_prefetches() -> list[Prefetch]:
    """What StudySerializer reads besides the study: its shown prediction and reviews."""
    return [
        Prefetch(
            "predictions",
            queryset=Prediction.objects.shown().select_related("model_version").order_by("-created_at", "-id"),
            to_attr="shown_predictions",
        ),
        Prefetch("reviews", queryset=Review.objects.select_related("radiologist"), to_attr="current_reviews"),
    ]


class StudyQueryMixin(TenantAPIMixin):
    def base_queryset(self):
        return self.tenant_queryset(Study.objects.all()).prefetch_related(*_result_prefetches())

    def get_study(self, code: str) -> Study:
        try:
            code = uuid.UUID(str(code))
        except ValueError as exc:
            raise Http404("No such study.") from exc
        study = self.base_queryset().filter(code=code).first()
        if study is None:
            raise NotInThisHospital(Study, {"code": code}, via="api", words="No such study.")
        return study

    def listed_response(self, page):
        """A page of studies, its reading recorded with the codes it carries."""
        audit.record(
            Action.STUDY_LISTED, request=self.request, hospital=self.hospital, count=len(page),
            studies=audit.study_codes(page),
        )  # fmt: skip
        return self.get_paginated_response(StudySerializer(page, many=True).data)


class ChangesPagination(BasePagination):
    """`updated_since` reads: oldest change first, paged by a cursor after the last study read.

    The cursor is that study's (updated_at, code), and the next page starts strictly after
    it, so a study that changes while an EMR reads the pages moves after the cursor and is
    read again later; none is skipped. Paged by number, newest first, a change pushed an
    unread study back onto a page already read (API review); DRF's CursorPagination keys on
    updated_at alone and skips by position within equal times, and a batch of results
    shares one time, so a change there skipped an unread study too (diff review).
    """

    page_size = api_settings.PAGE_SIZE
    cursor_query_param = "cursor"

    def paginate_queryset(self, queryset, request, view=None):
        self.request = request
        after = self._cursor_of(request.query_params.get(self.cursor_query_param))
        queryset = queryset.order_by("updated_at", "code")
        if after is not None:
            changed_at, code = after
            queryset = queryset.filter(Q(updated_at__gt=changed_at) | Q(updated_at=changed_at, code__gt=code))
        rows = list(queryset[: self.page_size + 1])
        self.page, self.has_next = rows[: self.page_size], len(rows) > self.page_size
        return self.page

    def get_paginated_response(self, data):
        return Response({"next": self._next_link(), "previous": None, "results": data})

    def get_paginated_response_schema(self, schema):
        return {
            "type": "object",
            "required": ["results"],
            "properties": {
                "next": {"type": "string", "nullable": True, "format": "uri"},
                "previous": {"type": "string", "nullable": True, "format": "uri"},
                "results": schema,
            },
        }

    def _next_link(self) -> str | None:
        if not self.has_next:
            return None
        last = self.page[-1]
        token = base64.urlsafe_b64encode(f"{last.updated_at.isoformat()}|{last.code}".encode()).decode()
        return replace_query_param(self.request.build_absolute_uri(), self.cursor_query_param, token)

    def _cursor_of(self, token: str | None):
        if not token:
            return None
        try:
            changed_at, code = base64.urlsafe_b64decode(token.encode()).decode().split("|")
            moment = datetime.fromisoformat(changed_at)
            if moment.tzinfo is None:
                raise ValueError("a cursor's time has a time zone")
            # In UTC, as every cursor Pleura gives: one near the ends of time overflows here
            # (400), not in the database (a 500 on SQLite).
            return moment.astimezone(UTC), uuid.UUID(code)
        except (ValueError, UnicodeError, OverflowError) as exc:
            raise exceptions.ValidationError("cursor is not one Pleura gave: follow the `next` link.") from exc


def _only_value(data, name: str):
    """`data`'s value for `name` (None when absent), refused when a query string or form
    names it twice: read as its last, two accession numbers searched one, and two patient
    IDs stored the study under one of them, with no word said."""
    values = data.getlist(name) if hasattr(data, "getlist") else [data[name]] if name in data else []
    if len(values) > 1:
        raise exceptions.ValidationError(f"{name} was sent {len(values)} times: send it once.")
    return values[0] if values else None


# What the search and the list read; any other name is refused. A misspelt filter read as
# none, and so did an empty one: the answer was every study of the hospital, newest first,
# which an EMR takes for its patient's (EMR review).
SEARCH_FILTERS = ("accession_number", "status", "study_instance_uid", "sop_instance_uid")
LIST_PARAMETERS = ("status", "accession_number", "updated_since", "page", "cursor", "format")
UID_FILTERS = ("study_instance_uid", "sop_instance_uid")


def _refuse_unknown(names, known: tuple[str, ...]) -> None:
    # A form posted with a session (the browsable API) carries its CSRF token.
    unknown = sorted(set(names) - set(known) - {"csrfmiddlewaretoken"})
    if unknown:
        raise exceptions.ValidationError(
            f"Pleura has no filter named {', '.join(unknown)}: the names it reads here are {', '.join(known)}."
        )


def _filtered(queryset, filters):
    """The studies of `queryset` that `filters` (a query string or a request body) name:
    by `status`, `accession_number`, and in a body the DICOM `study_instance_uid` or
    `sop_instance_uid`. A filter sent empty is refused, not read as no filter."""
    for name in SEARCH_FILTERS:
        if name in filters and _only_value(filters, name) in (None, ""):
            raise exceptions.ValidationError(f"{name} is empty: give it a value, or leave it out to mean any.")
    status_wanted = _only_value(filters, "status")
    if status_wanted:
        if status_wanted not in Study.Status.values:
            choices = ", ".join(Study.Status.values)
            raise exceptions.ValidationError(f"status must be one of: {choices}.")
        queryset = queryset.filter(status=status_wanted)
    if accession := _only_value(filters, "accession_number"):
        try:
            accession = services.clean_identifier(accession, "accession_number")
        except RejectedUpload as exc:  # a NUL would make PostgreSQL refuse the query (500)
            raise exceptions.ValidationError(exc.detail) from exc
        queryset = queryset.filter(accession_number=accession)
    for name in UID_FILTERS:
        if uid := _only_value(filters, name):
            if not is_uid(uid):
                raise exceptions.ValidationError(f"{name} is not a DICOM UID (digits and dots, at most 64).")
            queryset = queryset.filter(**{name: uid})
    return queryset


class StudyPages(PageNumberPagination):
    """Numbered pages of studies; a page that is not one is a 400 in words, where DRF's 404
    "Invalid page." read as "no such study" (EMR review)."""

    def paginate_queryset(self, queryset, request, view=None):
        try:
            return super().paginate_queryset(queryset, request, view)
        except exceptions.NotFound as exc:
            raise exceptions.ValidationError(
                "page must be the number of a page there is, as the `next` and `previous` links give them."
            ) from exc

    def get_paginated_response_schema(self, schema):
        described = super().get_paginated_response_schema(schema)
        # DRF's own examples named another API's URL (EMR review).
        for link, page in (("next", 4), ("previous", 2)):
            described["properties"][link]["example"] = f"https://pleura.hospital.example/api/v1/studies/?page={page}"
        return described


class StudyListPagination(StudyPages):
    """Pages of the list, and the schema of both kinds of page it answers: numbered, with
    `count`, and the change feed's (`updated_since`), paged by a cursor without one. The
    schema said `count` was always there, and clients generated from it failed on the
    feed's pages (EMR review)."""

    def get_paginated_response_schema(self, schema):
        described = super().get_paginated_response_schema(schema)
        described["required"] = ["results"]
        described["properties"]["count"]["description"] = (
            "Studies matching, on numbered pages; absent on the change feed's pages (with updated_since)."
        )
        return described


class StudyListCreateView(StudyQueryMixin, generics.GenericAPIView):
    serializer_class = StudySerializer
    pagination_class = StudyListPagination
    parser_classes = [MultiPartParser, DicomParser, OctetStreamParser]

    @property
    def paginator(self):
        if not hasattr(self, "_paginator"):
            request = getattr(self, "request", None)
            changes = request is not None and "updated_since" in request.query_params
            self._paginator = ChangesPagination() if changes else self.pagination_class()
        return self._paginator

    def get_queryset(self):
        params = self.request.query_params
        # The UIDs are searched in a body only (POST .../search/), as accession numbers should be.
        _refuse_unknown(params, LIST_PARAMETERS)
        # Each kind of page has its own: the other's was ignored without a word (EMR review).
        if "cursor" in params and "updated_since" not in params:
            raise exceptions.ValidationError("cursor pages the change feed: send it with updated_since, as next does.")
        if "page" in params and "updated_since" in params:
            raise exceptions.ValidationError("The change feed is paged by cursor: follow `next`, with no page.")
        queryset = _filtered(self.base_queryset().order_by("-created_at", "-id"), params)
        if "updated_since" in params:
            since = _only_value(params, "updated_since")
            if not since:
                raise exceptions.ValidationError(
                    "updated_since is empty: give the largest updated_at read, less a minute."
                )
            queryset = queryset.filter(updated_at__gte=_parse_since(since))
        return queryset

    @extend_schema(
        summary="List the hospital's studies, newest first (with updated_since: oldest change first)",
        description="Paged by number; with `updated_since`, the change feed, paged by a cursor.",
        parameters=[
            OpenApiParameter("status", str, enum=Study.Status.values, description="Only studies in this status."),
            OpenApiParameter(
                "accession_number",
                str,
                deprecated=True,
                description="Only studies with this accession number. Deprecated: an accession number in a URL "
                "is kept by every proxy and log that keeps URLs (and in `next` links); send it to "
                "`POST /api/v1/studies/search/` instead.",
            ),
            OpenApiParameter(
                "updated_since",
                OpenApiTypes.DATETIME,
                description="ISO 8601 (a date, or a time without a zone, is UTC); studies changed at or after "
                "this time (their `updated_at`): a new status, prediction, review or withdrawal. The answer is "
                "then ordered by `updated_at`, oldest first, and "
                "paged by a cursor: follow `next` to the end (`count` is absent), then ask again with the last "
                "`updated_at` read, less a minute.",
            ),
        ],
        responses={200: StudySerializer(many=True), **errors(400, 401, 404, 429, 503)},
        examples=[STUDY_EXAMPLE],
    )
    def get(self, request, *args, **kwargs):
        page = self.paginate_queryset(self.get_queryset())
        return self.listed_response(page)

    @extend_schema(
        summary="Upload a radiograph (PNG, JPEG or DICOM)",
        description=(
            "Send `multipart/form-data` with a `file` field (and optional `patient_id`, "
            "`accession_number`), or the DICOM file itself as the body with "
            "`Content-Type: application/dicom`. The type is detected from the content. "
            "Answers 202 with the queued study, or 200 with the existing study when this "
            "SOP Instance UID was already sent to your hospital. An instance whose study "
            "failed may be sent again: its copy replaces the study's file and the same "
            "study is queued anew (202). 409 when that SOP Instance UID was sent before for "
            "other pixels, another patient or another study, and when `patient_id` contradicts "
            "the DICOM header's Patient ID: nothing is stored. A PNG or JPEG carries no UID, so send "
            "an `Idempotency-Key` header to make a retry safe: sent again with the same key, file and "
            "identifiers, the request gets the study it stored (200) instead of storing a second copy."
        ),
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                str,
                location=OpenApiParameter.HEADER,
                description="Optional; a key of your own for this upload, unique within your hospital (a UUID). "
                "A retry with the same key, file and identifiers answers 200 with the study the first request "
                "stored; the same key with another file or other identifiers is refused (422). Kept with the "
                "study: do not put patient data in it.",
            )
        ],
        request={
            "multipart/form-data": StudyUploadSerializer,
            "application/dicom": OpenApiTypes.BINARY,
            # Read as the others are, by content (EMR review: undocumented, though it worked).
            "application/octet-stream": OpenApiTypes.BINARY,
        },
        responses={
            202: OpenApiResponse(
                StudySerializer,
                description="Stored (or a failed study's instance stored again) and queued for prediction.",
            ),
            200: OpenApiResponse(
                StudySerializer,
                description="Already stored (same SOP Instance UID and not failed, or the same Idempotency-Key).",
            ),
            409: OpenApiResponse(
                ErrorSerializer,
                description="The SOP Instance UID was sent before for another image or patient, or `patient_id` "
                "contradicts the DICOM header's.",
            ),
            **errors(400, 401, 403, 411, 413, 415, 429, 503),
            422: OpenApiResponse(
                ErrorSerializer,
                description="Truncated, corrupt, a DICOM object that is not an image, or an Idempotency-Key "
                "used before for another file or other identifiers.",
            ),
        },
        examples=[QUEUED_EXAMPLE, ERROR_EXAMPLE],
    )
    def post(self, request, *args, **kwargs):
        try:
            payload, identifiers = _upload_payload(request)
            identifiers["idempotency_key"] = _idempotency_key(request)
        except exceptions.APIException as exc:
            # Refused before the service saw it (media type, size, form): audited all the same.
            services.record_refused_upload(
                request=request, hospital=self.hospital, source=Study.Source.API, status_code=exc.status_code,
                reason=str(exc.detail),
            )  # fmt: skip
            raise
        try:
            study, queued = services.ingest_upload(
                hospital=self.hospital, data=payload, source=Study.Source.API, request=request,
                **_caller(request), **identifiers,
            )  # fmt: skip
        except RejectedUpload as exc:
            return Response({"detail": exc.detail}, status=exc.status_code, headers=exc.headers)
        if queued:
            # Stored (or stored again) a moment ago: the 202 describes the study as stored, before any
            # prediction or review (the caller polls for those).
            study.shown_predictions, study.current_reviews = [], []
        else:
            prefetch_related_objects([study], *_result_prefetches())
        headers = {"Location": request.build_absolute_uri(f"{request.path.rstrip('/')}/{study.code}/")}
        code = status.HTTP_202_ACCEPTED if queued else status.HTTP_200_OK
        return Response(StudySerializer(study).data, status=code, headers=headers)


IDEMPOTENCY_KEY_MAX_LENGTH = 128
_IDEMPOTENCY_KEY_RE = re.compile(rf"[\x21-\x7e]{{1,{IDEMPOTENCY_KEY_MAX_LENGTH}}}")


def _idempotency_key(request) -> str:
    """The request's `Idempotency-Key` header, or "" when it sends none."""
    key = request.headers.get("Idempotency-Key", "").strip()
    if key and not _IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise exceptions.ParseError(
            f"The Idempotency-Key header must be 1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters "
            "without spaces (a UUID is a good key)."
        )
    return key


def _upload_payload(request) -> tuple[bytes, dict]:
    _check_content_length(request, settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES)
    data = _request_data(request)
    if _media_type(request).lower() in RAW_BODY_TYPES:
        # An empty body parses to {}: the service then says "The file is empty."
        return (bytes(data) if isinstance(data, bytes | bytearray) else b""), {}
    return _multipart_payload(data)


def _multipart_payload(data) -> tuple[bytes, dict]:
    if hasattr(data, "getlist") and len(data.getlist("file")) > 1:
        raise exceptions.ParseError("Send one radiograph per request: this one has several 'file' parts.")
    upload = data.get("file")
    if isinstance(upload, str):
        raise exceptions.ParseError(
            "The 'file' part has no filename in its Content-Disposition, so it was read as text: "
            'send it as a file (Content-Disposition: form-data; name="file"; filename="...").'
        )
    if upload is None:
        raise exceptions.ParseError("Send the radiograph in a multipart field named 'file'.")
    if upload.size > settings.MAX_UPLOAD_BYTES:
        raise PayloadTooLarge(f"The file is larger than the {_limit_text()} limit.")
    identifiers = {name: _only_value(data, name) or "" for name in ("patient_id", "accession_number")}
    return upload.read(), identifiers


def _parse_since(value: str) -> datetime:
    parsed = None
    try:
        parsed = parse_datetime(value)
        if parsed is None and parse_date(value) is not None:
            parsed = datetime.combine(parse_date(value), time.min)
    except ValueError:
        parsed = None
    if parsed is None:
        raise exceptions.ValidationError("updated_since must be an ISO 8601 date or date-time.")
    try:
        if timezone.is_naive(parsed):
            # UTC, as the API speaks: the server's TIME_ZONE west of UTC skipped the changes
            # of the hours between (EMR review).
            parsed = parsed.replace(tzinfo=UTC)
        # In UTC, as the database compares it: 0001-01-01T00:00+01:00 has no UTC time.
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise exceptions.ValidationError("updated_since is outside the dates Pleura can compare.") from exc


class StudySearchView(StudyQueryMixin, generics.GenericAPIView):
    """The list's filters in the body of a POST: an accession number in a URL is kept by
    every proxy, gateway and log that keeps URLs, and DRF repeats it in `next` links (PHI
    review). A read, so every role that may list studies may search them."""

    parser_classes = [FiltersJSONParser, FormParser]
    pagination_class = StudyPages
    # What OPTIONS describes: without one, DRF's metadata raised (a 500).
    serializer_class = StudySearchSerializer

    def roles_for_method(self, method: str) -> frozenset[str]:
        return self.read_roles

    @extend_schema(
        summary="Find the hospital's studies by accession number or DICOM UIDs (and status), newest first",
        description=(
            "The filters of `GET /api/v1/studies/` in a JSON or form body, so that no accession number "
            "travels in a URL, and the DICOM `study_instance_uid` and `sop_instance_uid`. A filter "
            "Pleura does not know, or one sent empty, is refused (400), as are a search with no filter and "
            "filters in the URL. Paged as the list is: POST the "
            "same body to the `next` link, which carries only the page number."
        ),
        request=StudySearchSerializer,
        parameters=[OpenApiParameter("page", int, description="The page, as the `next` link gives it.")],
        responses={200: StudySerializer(many=True), **errors(400, 401, 404, 429, 503)},
        examples=[STUDY_EXAMPLE],
    )
    def post(self, request, *args, **kwargs):
        filters = request.data
        if not hasattr(filters, "get"):
            raise exceptions.ValidationError("The body must be an object of filters.")
        # Filters in the URL were ignored, and the search answered every study of the
        # hospital (EMR review); they belong in the body, which no proxy or log keeps.
        if in_url := sorted(set(request.query_params) - {"page", "format"}):
            raise exceptions.ValidationError(
                f"The search reads its filters from the body, not the URL ({', '.join(in_url)}): send them as "
                "JSON or a form."
            )
        _refuse_unknown(filters, SEARCH_FILTERS)
        if not any(name in filters for name in SEARCH_FILTERS):
            raise exceptions.ValidationError(
                f"Give at least one filter ({', '.join(SEARCH_FILTERS)}): to read every study, GET /api/v1/studies/."
            )
        for name in SEARCH_FILTERS:
            if filters.get(name) is not None and not isinstance(filters.get(name), str):
                raise exceptions.ValidationError(f"{name} must be a string.")
        queryset = _filtered(self.base_queryset().order_by("-created_at", "-id"), filters)
        page = self.paginate_queryset(queryset)
        return self.listed_response(page)


class StudyDetailView(StudyQueryMixin, APIView):
    @extend_schema(
        summary="One study: status, prediction, reviews, warnings",
        description="The study of this `id` in your hospital, as the list gives it.",
        responses={200: StudySerializer, **errors(401, 404, 429, 503)},
        examples=[STUDY_EXAMPLE, QUEUED_EXAMPLE],
    )
    def get(self, request, code: str):
        study = self.get_study(code)
        audit.record(Action.STUDY_VIEWED, request=request, hospital=self.hospital, target=study, via="api")
        return Response(StudySerializer(study).data)


class StudyWithdrawView(StudyQueryMixin, APIView):
    parser_classes = [FiltersJSONParser, FormParser]
    serializer_class = WithdrawalSerializer

    @extend_schema(
        summary="Withdraw a study filed in error (another patient's film, a test image, a duplicate)",
        description=(
            "The study is kept, with who withdrew it, when and why, but takes no reviews and is never used "
            "for training; its DICOM instance may then be sent again, under the right patient, as a new "
            "study. Withdrawing is final. Asked again of a withdrawn study, the answer is the study as it "
            "is, unchanged (200)."
        ),
        request=WithdrawalSerializer,
        responses={200: StudySerializer, **errors(400, 401, 403, 404, 429, 503)},
    )
    def post(self, request, code: str):
        study = self.get_study(code)
        body = request.data
        if not hasattr(body, "get"):
            raise exceptions.ValidationError("The body must be an object with a reason.")
        if unknown := sorted(set(body) - {"reason", "csrfmiddlewaretoken"}):
            raise exceptions.ValidationError(f"A withdrawal reads only a reason, not {', '.join(unknown)}.")
        if hasattr(body, "getlist") and len(body.getlist("reason")) > 1:
            raise exceptions.ValidationError("The reason was sent twice: send it once.")
        if body.get("reason") is not None and not isinstance(body.get("reason"), str):
            raise exceptions.ValidationError("reason must be a string.")
        try:
            withdraw_study(study, reason=body.get("reason", ""), request=request, **_caller(request))
        except WithdrawalRefused as exc:
            raise exceptions.ValidationError(str(exc)) from exc
        study = self.get_study(code)
        return Response(StudySerializer(study).data)


class _PNGView(StudyQueryMixin, APIView):
    kind = ""

    def perform_content_negotiation(self, request, force=False):
        # Clients asking for image/png must not get 406: errors are still rendered as JSON.
        return super().perform_content_negotiation(request, force=True)

    def file_of(self, study: Study):
        raise NotImplementedError

    def get(self, request, code: str):
        study = self.get_study(code)
        fieldfile = self.file_of(study)
        response = protected_file_response(fieldfile, content_type="image/png", download_name=f"{self.kind}.png")
        # The portal's words ("image": display or heatmap), so one filter finds both (UX review).
        image = "display" if self.kind == "image" else self.kind
        audit.record(Action.IMAGE_VIEWED, request=request, hospital=self.hospital, target=study, image=image, via="api")
        return response


@extend_schema(
    summary="The radiograph as an 8-bit PNG (windowed, at most 1024 px on the long side)",
    description="The picture doctors see in the portal, drawn from the stored original.",
    responses={(200, "image/png"): OpenApiTypes.BINARY, **errors(401, 404, 429, 503)},
)
class StudyImageView(_PNGView):
    kind = "image"

    def file_of(self, study: Study):
        return services.display_image_of(study)


@extend_schema(
    summary="The Grad-CAM heatmap of the shown prediction (transparent PNG overlay)",
    description="The size of the radiograph's PNG; 404 while the study has no prediction, or when the model drew "
    "no heatmap.",
    responses={(200, "image/png"): OpenApiTypes.BINARY, **errors(401, 404, 429, 503)},
)
class StudyHeatmapView(_PNGView):
    kind = "heatmap"

    def file_of(self, study: Study):
        prediction = shown_prediction(study)
        if prediction is None or not prediction.heatmap:
            # "Yet" only while one may come: a failed study's answer implied it would (EMR review).
            if study.status in (Study.Status.QUEUED, Study.Status.PROCESSING):
                raise Http404("This study has no heatmap yet: it is still being analysed.")
            outcome = "failed" if study.status == Study.Status.FAILED else "made none"
            raise Http404(f"This study has no heatmap: its analysis {outcome}.")
        return prediction.heatmap


class _StowSchema(AutoSchema):
    def get_operation_id(self) -> str:
        # One view serves both resources; each gets its own operation id.
        return "dicomweb_store_study_instances" if "{study_instance_uid}" in self.path else "dicomweb_store_instances"


class StowView(TenantAPIMixin, APIView):
    """DICOMweb STOW-RS: POST /dicomweb/studies[/{StudyInstanceUID}] with
    multipart/related; type="application/dicom"."""

    parser_classes = [MultipartRelatedParser]
    renderer_classes = [DicomJSONRenderer, JSONRenderer]
    schema = _StowSchema()

    def perform_content_negotiation(self, request, force=False):
        return super().perform_content_negotiation(request, force=True)

    def finalize_response(self, request, response, *args, **kwargs):
        """An error ({"detail": ...}) is plain JSON: labelled application/dicom+json, strict
        DICOMweb clients tried to read it as a DICOM JSON data set (API review)."""
        response = super().finalize_response(request, response, *args, **kwargs)
        if isinstance(response.data, dict) and set(response.data) == {"detail"}:
            response.accepted_renderer, response.accepted_media_type = JSONRenderer(), "application/json"
        return response

    @extend_schema(
        summary="DICOMweb STOW-RS: store DICOM instances",
        description=(
            'Body: `multipart/related; type="application/dicom"; boundary=...`, one DICOM '
            "instance per part. Answers the PS3.18 DICOM JSON response: 200 when every "
            "instance was stored, 202 when some failed, 409 when none was stored (503 with "
            "Retry-After when that was because the image storage is unavailable); "
            "Failed SOP Sequence items carry a Failure Reason (0xA700 out of resources, "
            "0xC000 cannot understand, 0x0122 SOP class not supported, 0x0110 processing failure, "
            "0x0111 a SOP Instance UID received before for another image or patient, and 0xA901 when "
            "an instance sent to /dicomweb/studies/{StudyInstanceUID} belongs to another study). "
            "A part not labelled application/dicom fails with 0xC000, named by its SOP UIDs when it "
            "is DICOM all the same; one that cannot be read as DICOM fails without them, which only "
            "its header could give: the order of the failures is the order of the parts."
        ),
        request={"multipart/related": OpenApiTypes.BINARY},
        # The answer is DICOM JSON whatever `?format=` says (DRF's own parameter, documented by default).
        parameters=[OpenApiParameter("format", exclude=True)],
        responses={
            (200, dicomweb.DICOM_JSON_MEDIA_TYPE): OpenApiTypes.OBJECT,
            (202, dicomweb.DICOM_JSON_MEDIA_TYPE): OpenApiTypes.OBJECT,
            (409, dicomweb.DICOM_JSON_MEDIA_TYPE): OpenApiTypes.OBJECT,
            **errors(400, 401, 403, 411, 413, 415, 429, 503),
        },
        examples=[
            OpenApiExample(
                "One stored, one refused",
                value={
                    "00081199": {
                        "vr": "SQ",
                        "Value": [
                            {
                                "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1"]},
                                "00081155": {"vr": "UI", "Value": ["1.2.392.200036.9125.0.19950720112207"]},
                            }
                        ],
                    },
                    "00081198": {
                        "vr": "SQ",
                        "Value": [
                            {
                                "00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.11"]},
                                "00081155": {"vr": "UI", "Value": ["1.2.276.0.7230010.3.1.4.1"]},
                                "00081197": {"vr": "US", "Value": [290]},
                            }
                        ],
                    },
                },
                response_only=True,
                status_codes=["202"],
            )
        ],
    )
    def post(self, request, *args, study_instance_uid: str = "", **kwargs):
        try:
            parts = self._instance_parts(request, study_instance_uid)
        except (exceptions.APIException, dicomweb.StowError) as exc:
            # Refused before any instance was read (media type, size, body): audited as the
            # instances' own refusals are.
            services.record_refused_upload(
                request=request, hospital=self.hospital, source=Study.Source.DICOMWEB, status_code=exc.status_code,
                reason=str(exc.detail),
            )  # fmt: skip
            if isinstance(exc, dicomweb.StowError):
                return Response({"detail": exc.detail}, status=exc.status_code)
            raise
        result = dicomweb.store_instances(
            hospital=self.hospital,
            parts=parts,
            request=request,
            study_instance_uid=study_instance_uid,
            **_caller(request),
        )
        return Response(
            result.body, status=result.status_code, headers=result.headers, content_type=dicomweb.DICOM_JSON_MEDIA_TYPE
        )

    def _instance_parts(self, request, study_instance_uid: str) -> list[dicomweb.Part]:
        from diagnostics.dicom import is_uid  # pydicom and its plugins: loaded where used

        if study_instance_uid and not is_uid(study_instance_uid):
            raise exceptions.ParseError(
                "The Study Instance UID in the URL is not a DICOM UID (digits and dots, at most 64 characters)."
            )
        _check_content_length(request, settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES)
        body = _request_data(request)
        if not isinstance(body, bytes | bytearray) or not body:
            raise exceptions.ParseError("The request body is empty.")
        return dicomweb.split_multipart_related(bytes(body), request.META.get("CONTENT_TYPE", ""))
