from __future__ import annotations

from hospital.tenancy import resolve_membership


class ActiveHospitalMiddleware:
    """Sets `request.membership` and `request.hospital` for the hospital picked in the session.

    Resolved once per request (one query, only for signed-in users) so every view and
    template reads the same answer.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.membership = resolve_membership(request)
        request.hospital = request.membership.hospital if request.membership else None
        return self.get_response(request)
