"""The portal's answer to an error no view handled.

An outage (a database that cannot be reached during a restart or a failover, or a
`ServiceUnavailable` raised by the code that met one) is answered 503 with Retry-After,
so people, proxies and health checks know it will pass; anything else is Django's own
500. The REST API answers the same outages in `hospital.api.exception_handler`.
"""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template import loader
from django.views import defaults

DATABASE_RETRY_AFTER_SECONDS = 30
# The image storage (a disk, an S3 bucket), whether an upload or a reading met it down.
STORAGE_RETRY_AFTER_SECONDS = 60
DATABASE_UNAVAILABLE_PAGE = (
    "Its database cannot be reached just now, so nothing was read or changed. Please try again in a minute; "
    "if this persists, contact your Pleura administrator."
)


# Paths answered to machines (the REST API, DICOMweb), in JSON even when nothing else
# handled the error.
MACHINE_PATHS = ("/api/", "/dicomweb/")
API_SERVER_ERROR = (
    "Pleura met an error of its own and could not complete this request; it has been logged. "
    "Please try again later, and tell your Pleura administrator if it persists."
)


class ServiceUnavailable(Exception):
    """A part Pleura depends on is out just now, through no fault of the request: answered
    503 with Retry-After and `detail`, words for the person who asked."""

    def __init__(self, detail: str, retry_after_seconds: int):
        super().__init__(detail)
        self.detail = detail
        self.retry_after_seconds = retry_after_seconds


def server_error(request: HttpRequest) -> HttpResponse:
    # Django calls the 500 handler inside the `except` that caught the error.
    error = sys.exc_info()[1]
    if isinstance(error, OperationalError | InterfaceError):
        return _unavailable_page(DATABASE_UNAVAILABLE_PAGE, DATABASE_RETRY_AFTER_SECONDS)
    if isinstance(error, ServiceUnavailable):
        return _unavailable_page(error.detail, error.retry_after_seconds)
    if request.path.startswith(MACHINE_PATHS):
        # EMRs parse {"detail": ...} on every error; an HTML page is none of theirs.
        return JsonResponse({"detail": API_SERVER_ERROR}, status=500)
    return defaults.server_error(request)


API_NOT_FOUND = "No such address in Pleura's API: check the path against /api/v1/docs/."


def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A path nothing answers: machines get {"detail": ...} in JSON, like every other error
    of theirs (an EMR's mistyped path got the portal's HTML page), people the portal's page."""
    from hospital.tenancy import NotInThisHospital  # hospital's modules import this one

    elsewhere = None
    if isinstance(exception, NotInThisHospital):
        owners = exception.record(request)
        if request.method == "GET" and "HX-Request" not in request.headers:  # a page, not a poll
            elsewhere = exception.hospital_of_the_callers(request, owners)
    if request.path.startswith(MACHINE_PATHS):
        response = JsonResponse({"detail": API_NOT_FOUND}, status=404)
        response["Cache-Control"] = "private, no-store"
        return response
    if elsewhere is not None:  # one of the caller's own hospitals: offer to switch to it
        context = {"elsewhere": elsewhere, "back_to": request.get_full_path()}
        return render(request, "404.html", context, status=404)
    return defaults.page_not_found(request, exception)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """A request Django itself refused to read (more fields than DATA_UPLOAD_MAX_NUMBER_FIELDS,
    a body past its size limit, a suspicious operation): machines get {"detail": ...} in
    JSON, as for every other error of theirs (they got the portal's HTML page), people the
    portal's page. The exception's own words are never repeated."""
    if request.path.startswith(MACHINE_PATHS):
        detail = _BAD_REQUEST_WORDS.get(type(exception).__name__, "The request is malformed and could not be read.")
        return JsonResponse({"detail": detail}, status=400)
    return defaults.bad_request(request, exception)


_BAD_REQUEST_WORDS = {
    "TooManyFieldsSent": "The request sends more fields than Pleura reads: send the few its documentation names.",
    "TooManyFilesSent": "The request sends more files than Pleura reads: send one radiograph per request.",
    "RequestDataTooBig": "The request's body is larger than Pleura reads at this address.",
}


def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's 403, kept in the trail (`access.denied`): a member trying what their role
    may not do, an admin reaching for another hospital's page."""
    from hospital.tenancy import record_denied  # hospital's modules import this one

    record_denied(request)
    return defaults.permission_denied(request, exception)


STALE_PAGE = (
    "Pleura could not confirm that this came from one of its own pages. The page is out of date "
    "if you signed in again since it was opened, here or in another tab: reload it, then try again. "
    "If this keeps happening, your browser may be blocking Pleura's cookies."
)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """Django's CSRF refusal, in words: most often a page opened before its user signed in
    again (which rotates the token), in this tab or another. htmx requests get the words
    as text for the page to show; Django's own page, and the portal's "your role does not
    allow this" for every 403, sent people looking for a permission they had. Django logs
    `reason` (django.security.csrf)."""
    if "HX-Request" in request.headers:
        return HttpResponse(STALE_PAGE, status=403, content_type="text/plain; charset=utf-8")
    if request.path.startswith(MACHINE_PATHS):
        return JsonResponse({"detail": STALE_PAGE}, status=403)
    return render(request, "403_csrf.html", {"detail": STALE_PAGE}, status=403)


def _unavailable_page(detail: str, retry_after_seconds: int) -> HttpResponse:
    # Rendered without the request: its context processors would query the database.
    page = loader.get_template("503.html").render({"detail": detail})
    response = HttpResponse(page, status=503)
    response["Retry-After"] = str(retry_after_seconds)
    return response
