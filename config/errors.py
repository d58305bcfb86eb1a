"""The portal's answer to an error no view handled.

A database that cannot be reached (a restart, a failover) is answered 503 with
Retry-After, so people, proxies and health checks know it will pass; anything else is
Django's own 500. The REST API answers the same outage in `hospital.api.exception_handler`.
"""

from __future__ import annotations

import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.template import loader
from django.views import defaults

DATABASE_RETRY_AFTER_SECONDS = 30


def server_error(request: HttpRequest) -> HttpResponse:
    # Django calls the 500 handler inside the `except` that caught the error.
    if isinstance(sys.exc_info()[1], OperationalError | InterfaceError):
        # Rendered without the request: its context processors would query the database.
        page = loader.get_template("503.html").render()
        response = HttpResponse(page, status=503)
        response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
        return response
    return defaults.server_error(request)
