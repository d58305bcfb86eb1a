"""Stored images (PHI): writing each under a name of its own, and serving them after the
tenant gate has said yes.

A file is written under a name no other write uses (a new study's code, or a random
part), so that a write cut short can be removed by name without touching anyone
else's file: `save_as_new`.

Views authorize first, then call `protected_file_response`. Who moves the bytes:

- `PROTECTED_MEDIA_ACCEL_PREFIX` unset (development, tests): Django streams the file
  from whatever storage holds it.
- set (production, behind nginx), filesystem storage: the response is empty with
  `X-Accel-Redirect: <prefix>/media/<name>`; nginx serves the file from an `internal`
  location, so a client can never ask for that path directly.
- set, S3-compatible storage: `X-Accel-Redirect: <prefix>/s3/<scheme>/<host>/<key>?<signature>`
  with a presigned URL valid for `PROTECTED_MEDIA_S3_URL_SECONDS`; nginx fetches it from
  an `internal` location. The bucket stays private and the signed URL never reaches the
  browser.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.core.files.base import ContentFile
from django.db.models.fields.files import FieldFile
from django.http import FileResponse, Http404, HttpResponse

from config.errors import STORAGE_RETRY_AFTER_SECONDS, ServiceUnavailable

logger = logging.getLogger(__name__)

# A presigned URL only has to live as long as nginx takes to start fetching it.
DEFAULT_S3_URL_SECONDS = 60


class StoredImageUnavailable(ServiceUnavailable):
    """The image exists, but the storage cannot be read (or written) just now: 503."""

    def __init__(self):
        super().__init__(
            "The image cannot be shown just now because Pleura's image storage is unavailable. "
            "Please try again in a minute.",
            STORAGE_RETRY_AFTER_SECONDS,
        )

    @classmethod
    def because(cls, error: Exception, *, doing: str) -> StoredImageUnavailable:
        """Log what the storage raised (`doing`: "read" or "written") and return the 503."""
        logger.error("the image storage could not be %s (%s)", doing, type(error).__name__, exc_info=error)
        return cls()


def save_as_new(fieldfile: FieldFile, name: str, data: bytes) -> None:
    """Store `data` as `fieldfile` under `name`, a name only this call uses; if the
    storage fails, remove whatever part of the file it wrote (a full disk refuses a file
    midway) and raise what it raised."""
    intended = fieldfile.field.generate_filename(fieldfile.instance, name)
    try:
        fieldfile.save(name, ContentFile(data), save=False)
    except Exception:
        remove_file(fieldfile.storage, intended)
        raise


def remove_file(storage, name: str) -> None:
    """Remove `name` if it is there; a failure is logged, not raised: a clean-up must not
    hide the error that called it (S3 down raises botocore's)."""
    try:
        if storage.exists(name):
            storage.delete(name)
    except Exception:
        logger.warning("could not remove %s, a file no record refers to", name)


def protected_file_response(fieldfile: FieldFile, *, content_type: str, download_name: str) -> HttpResponse:
    if not fieldfile:
        raise Http404("This image is not available.")
    accel_prefix = getattr(settings, "PROTECTED_MEDIA_ACCEL_PREFIX", "")
    if accel_prefix:
        response = HttpResponse(content_type=content_type)
        response["X-Accel-Redirect"] = accel_redirect_target(fieldfile, accel_prefix)
    else:
        try:
            handle = fieldfile.open("rb")
        except FileNotFoundError as exc:
            raise Http404("This image is not available.") from exc
        except Exception as exc:  # whatever the backend raises (OSError on disk, botocore on S3)
            raise StoredImageUnavailable.because(exc, doing="read") from exc
        response = FileResponse(handle, content_type=content_type)
    response["Content-Disposition"] = f'inline; filename="{download_name}"'
    # Images are PHI: never kept by shared caches, nor by the browser beyond the session.
    response["Cache-Control"] = "private, no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def accel_redirect_target(fieldfile: FieldFile, accel_prefix: str) -> str:
    """The internal nginx URI that streams this file (see deploy/nginx/pleura.conf)."""
    prefix = accel_prefix.rstrip("/")
    if _is_s3(fieldfile.storage):
        seconds = getattr(settings, "PROTECTED_MEDIA_S3_URL_SECONDS", DEFAULT_S3_URL_SECONDS)
        signed = urlsplit(fieldfile.storage.url(fieldfile.name, expire=seconds))
        query = f"?{signed.query}" if signed.query else ""
        return f"{prefix}/s3/{signed.scheme}/{signed.netloc}{signed.path}{query}"
    return f"{prefix}/media/{fieldfile.name}"


def _is_s3(storage) -> bool:
    try:
        from storages.backends.s3 import S3Storage
    except ImportError:  # django-storages is optional for filesystem-only installs
        return False
    return isinstance(storage, S3Storage)


# S3's 403s that say the caller's credentials or clock are wrong: every object gets them,
# so they are an outage of the storage, never one file's fault.
_CREDENTIAL_REFUSALS = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "RequestTimeTooSkewed", "ExpiredToken", "InvalidToken"}
)


def refused_object(error: Exception) -> bool:
    """The storage answered and refused this object (the disk's permission, S3's 403):
    the file's fault. Connection errors and timeouts are the storage's (an outage), and so
    is a 403 about the credentials (an expired key, a skewed clock): taken for each file's
    fault, studies alone in their batch failed one after another while the key was wrong."""
    if isinstance(error, PermissionError):
        return True
    response = getattr(error, "response", None)  # botocore's ClientError
    if not isinstance(response, dict):
        return False
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 403 and response.get("Error", {}).get("Code") not in _CREDENTIAL_REFUSALS
