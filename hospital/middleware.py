from __future__ import annotations

import zoneinfo

from django.utils import timezone

from hospital.tenancy import resolve_membership


class ActiveHospitalMiddleware:
    """Sets `request.membership` and `request.hospital` for the hospital picked in the session,
    and makes the hospital's time zone the current one for the request.

    Resolved once per request (one query, only for signed-in users) so every view and
    template reads the same answer.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.membership = resolve_membership(request)
        request.hospital = request.membership.hospital if request.membership else None
        if request.hospital is None:
            return self.get_response(request)
        # Pages show times, and date filters cut days, where the hospital is.
        with timezone.override(zoneinfo.ZoneInfo(request.hospital.time_zone)):
            return self.get_response(request)
