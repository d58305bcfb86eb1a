"""Serving stored images (PHI) after the tenant gate has said yes.

Views authorize first, then call `protected_file_response`. In production the bytes
are streamed by nginx through an internal location (X-Accel-Redirect); in development
Django streams them itself.
"""

from __future__ import annotations

from django.conf import settings
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404, HttpResponse


def protected_file_response(fieldfile: FieldFile, *, content_type: str, download_name: str) -> HttpResponse:
    if not fieldfile:
        raise Http404("This image is not available.")
    accel_prefix = getattr(settings, "PROTECTED_MEDIA_ACCEL_PREFIX", "")
    if accel_prefix:
        response = HttpResponse(content_type=content_type)
        response["X-Accel-Redirect"] = f"{accel_prefix.rstrip('/')}/{fieldfile.name}"
    else:
        try:
            handle = fieldfile.open("rb")
        except FileNotFoundError as exc:
            raise Http404("This image is not available.") from exc
        response = FileResponse(handle, content_type=content_type)
    response["Content-Disposition"] = f'inline; filename="{download_name}"'
    # Images are PHI: never kept by shared caches, nor by the browser beyond the session.
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response
