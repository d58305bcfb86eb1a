"""The tenant gate. Every view, endpoint, admin page and task resolves access here.

- `TenantQuerySet.for_hospital()` / `.visible_to()` start every tenant-owned query.
- `get_object_for_request()` is the one view helper: outsiders get 404, never 403.
- `role_required()` guards views: a member without the role gets 403, and a request
  from a page opened for another of the user's hospitals gets 409 (`switched_away`).
- `record_denied()` keeps each refusal in the trail: an object of another hospital asked
  for goes into the owning hospital's (`NotInThisHospital`), a role's 403 into the
  caller's (config.errors and hospital.api call it for every 403).
The DRF counterparts live in `hospital.api`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import wraps
from operator import attrgetter
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import DatabaseError, models, transaction
from django.db.models.constants import LOOKUP_SEP
from django.http import Http404, HttpResponse
from django.shortcuts import render

from config.safe_paths import loggable_path
from hospital import audit
from hospital.models import Hospital, Membership, Role

log = logging.getLogger(__name__)

SESSION_KEY = "active_hospital"
# The hospital a page was opened for, sent back by the page's own requests: htmx's (the
# header, set on every page's body) and its forms' (the field, templates/includes/).
OPENED_FOR_HEADER = "X-Pleura-Hospital"
OPENED_FOR_FIELD = "opened_for"


class TenantQuerySet(models.QuerySet):
    """Base queryset for models with a non-null `hospital` foreign key."""

    def for_hospital(self, hospital: Hospital | None) -> TenantQuerySet:
        if hospital is None:
            return self.none()
        return self.filter(hospital=hospital)

    def visible_to(self, user) -> TenantQuerySet:
        """Rows of every hospital the user is an active member of; all rows for superusers."""
        if not getattr(user, "is_authenticated", False):
            return self.none()
        if user.is_superuser:
            return self.all()
        return self.filter(hospital__in=hospitals_of(user))


def active_memberships(user) -> models.QuerySet[Membership]:
    if not getattr(user, "is_authenticated", False) or not getattr(user, "pk", None):
        return Membership.objects.none()
    return Membership.objects.active().filter(user=user).select_related("hospital")


def memberships_now(user) -> list[Membership]:
    """`active_memberships`, read once per user object: the sign-in backend asks it of every
    request's user (accounts.backends), and the active hospital is chosen from the same
    list, so a request reads the memberships once."""
    if not hasattr(user, "_memberships_now"):
        user._memberships_now = list(active_memberships(user))
    return user._memberships_now


def hospitals_of(user, roles: Iterable[str] | None = None) -> models.QuerySet[Hospital]:
    memberships = active_memberships(user)
    if roles is not None:
        memberships = memberships.filter(role__in=list(roles))
    return Hospital.objects.filter(pk__in=memberships.values("hospital_id"))


def admin_hospitals(user) -> models.QuerySet[Hospital]:
    """Hospitals the user administers (active `hospital_admin` memberships)."""
    return hospitals_of(user, roles=[Role.HOSPITAL_ADMIN])


def for_hospitals(queryset: models.QuerySet, hospitals: Iterable[Hospital] | models.QuerySet, lookup: str = "hospital"):
    """Rows of any of `hospitals`, for models reached through `lookup` (e.g. users via
    `memberships__hospital`). Through a relation that may repeat rows, a subquery on the
    primary key keeps them unique; a model's own hospital column is filtered directly: as
    a subquery, every count and date query of the admin's audit event list read all of a
    hospital's events again (13 to 18 s with 3 million; scale review)."""
    if LOOKUP_SEP not in lookup:
        return queryset.filter(**{f"{lookup}__in": hospitals})
    matching = queryset.model._default_manager.filter(**{f"{lookup}__in": hospitals}).values("pk")
    return queryset.filter(pk__in=matching)


def resolve_membership(request) -> Membership | None:
    """The membership for the hospital picked in this session (the first one by default)."""
    if not getattr(request.user, "is_authenticated", False):
        # API calls with a key and anonymous pages: skip compiling an empty query, which
        # cost every API call about 0.17 ms of CPU on the 2-core VM.
        return None
    memberships = memberships_now(request.user)
    if not memberships:
        return None
    chosen = request.session.get(SESSION_KEY) if hasattr(request, "session") else None
    for membership in memberships:
        if str(membership.hospital.code) == chosen:
            return membership
    return memberships[0]


def get_object_for_request(request, queryset: models.QuerySet, **lookup) -> models.Model:
    """Fetch a tenant-owned object of the active hospital, or 404 for everyone else."""
    hospital = getattr(request, "hospital", None)
    obj = queryset.for_hospital(hospital).filter(**lookup).first() if hospital else None
    if obj is None:
        raise NotInThisHospital(queryset.model, lookup, via="portal")
    return obj


class NotInThisHospital(Http404):
    """The 404 for an object of the tenant's that is not in the caller's hospital, or does
    not exist: the caller cannot tell which. If another hospital owns it, the 404 handlers
    (config.errors, hospital.api) record the try in that hospital's trail, once the
    request's own transaction is over: recorded inside it (the admin's change page is one),
    the event was rolled back with the refusal."""

    def __init__(self, model: type[models.Model], lookup: dict, *, via: str, words: str = "No such object."):
        super().__init__(words)
        self.model, self.lookup, self.via = model, lookup, via

    def record(self, request) -> list[Hospital]:
        """Another hospital's doctor trying study codes left no trace where it mattered.
        Each row the lookup names (the worklist's poll names several) is recorded in its
        own hospital's trail; a hospital's own row, in that hospital's. Returns the
        hospitals of the rows recorded, one per row."""
        if self.model is Hospital:
            related, owner = [], lambda hospital: hospital
        elif any(field.name == "hospital" for field in self.model._meta.get_fields()):
            related, owner = ["hospital"], attrgetter("hospital")
        else:
            return []  # not a tenant's row (a user belongs to hospitals through memberships)
        try:
            rows = self.model._default_manager.filter(**self.lookup).select_related(*related)
            elsewhere = list(rows[:_MOST_ROWS_RECORDED])
        except (ValueError, ValidationError):  # not a key at all ("abc" for an id): nobody's row
            return []
        # A platform row (no hospital) is nobody's trail to file it in: filed under the
        # caller's own, it told another hospital's admin which rows are the platform's.
        owned = [(owner(row), row) for row in elsewhere if owner(row) is not None]
        if owned:
            record_denied_all(request, owned, via=self.via)
        return [hospital for hospital, _row in owned]

    def hospital_of_the_callers(self, request, owners: list[Hospital]) -> Hospital | None:
        """Another of the caller's own hospitals, when it owns (`owners`, as `record` found
        them) the one row the portal asked for: a study opened in one tab after a switch to
        another hospital in another was a dead end, its address lost (UX review). None for
        anyone else's row."""
        user = getattr(request, "user", None)
        if self.via != "portal" or not getattr(user, "is_authenticated", False) or self.model is Hospital:
            return None
        if len(owners) != 1:
            return None
        return next((m.hospital for m in active_memberships(user) if m.hospital_id == owners[0].pk), None)


# A lookup names one row, or the worklist's poll at most a page of them.
_MOST_ROWS_RECORDED = 100


def record_denied(request, *, hospital: Hospital | None = None, target=None, **detail) -> None:
    """One `access.denied` event (by default in the caller's hospital)."""
    record_denied_all(request, [(hospital, target)], **detail)


def record_denied_all(request, refused: list[tuple[Hospital | None, Any]], **detail) -> None:
    """An `access.denied` event for each (hospital, target) refused, in one insert: a poll
    naming a page of another hospital's codes made three queries a code. A trail that
    cannot be written does not turn the refusal into a 500: nothing was shown or changed."""
    # The trail is append-only: a patient's ID put in a URL could never leave it.
    path = loggable_path(request)
    events = [
        audit.build(
            audit.Action.ACCESS_DENIED,
            request=request,
            hospital=hospital,
            target=target,
            outcome=audit.Outcome.DENIED,
            path=path,
            **detail,
        )
        for hospital, target in refused
    ]
    try:
        with transaction.atomic():
            audit.record_all(events)
    except DatabaseError as exc:
        log.warning("a refused request was not recorded: the audit trail could not be written (%s)", type(exc).__name__)


def has_role(request, roles: Iterable[str]) -> bool:
    membership = getattr(request, "membership", None)
    return membership is not None and membership.role in set(roles)


def role_required(*roles: str) -> Callable:
    """View decorator: signed-in members of the active hospital with one of `roles`.

    A platform operator with no membership gets a page saying so (403), whatever the page
    asked for: a 404 sent them "back to the worklist", the same 404 (admin review); anyone
    else without one is not signed in (accounts.backends). A member whose role is not
    allowed gets 403.
    """
    allowed = set(roles) or {role.value for role in Role}

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not request.user.is_authenticated:
                return _to_sign_in(request)
            if getattr(request, "membership", None) is None:
                return render(request, "accounts/no_hospital.html", status=403)
            if (refusal := switched_away(request)) is not None:
                return refusal
            if request.membership.role not in allowed:
                raise PermissionDenied("Your role does not allow this.")
            return view(request, *args, **kwargs)

        wrapper.allowed_roles = frozenset(allowed)  # read by the sign-in page's redirect
        return wrapper

    return decorator


def _to_sign_in(request) -> HttpResponse:
    """The sign-in page, and back to the page after it.

    A page's own request (htmx, or a script that says so with HX-Request) gets 401, not
    the redirect, which it would follow and then paint the sign-in page into the page,
    over the patient's data. HX-Redirect sends the whole window to the sign-in page
    instead, coming back to the page (HX-Current-URL, on this site only) afterwards.
    """
    from django.contrib.auth.views import redirect_to_login

    if not getattr(request, "htmx", False):
        return redirect_to_login(request.get_full_path())
    sign_in = redirect_to_login(request.htmx.current_url_abs_path or "/")["Location"]
    response = HttpResponse("Your session has ended. Please sign in again.", status=401, content_type="text/plain")
    response["HX-Redirect"] = sign_in
    return response


def switched_away(request) -> HttpResponse | None:
    """409 for a request from a page opened for another hospital than the session's.

    The active hospital is the session's, shared by the user's tabs. Switching in one tab
    left the others' pages naming the hospital they were opened for while their requests
    acted on the new one: an admin's consent saved for the other hospital, a worklist's
    filter filling one hospital's page with the other's patients, uploads stored there.
    Pages say which hospital they were opened for; such a request does nothing. None if
    the page says nothing (the API, a bookmarked link) or names the active hospital.
    """
    opened_for = request.headers.get(OPENED_FOR_HEADER) or request.POST.get(OPENED_FOR_FIELD, "")
    if not opened_for or opened_for == str(request.hospital.code):
        return None
    page_hospital = next(
        (m.hospital for m in active_memberships(request.user) if str(m.hospital.code) == opened_for), None
    )
    active = request.hospital.name
    if page_hospital is None:
        words = (
            "This page was opened for a hospital you no longer work in, so nothing was done. "
            f"Reload it to work in {active}."
        )
    else:
        words = (
            f"You switched to {active} in another tab after opening this page for {page_hospital.name}, so nothing "
            f"was done. Switch back to {page_hospital.name} to go on with this page, or reload it to work in {active}."
        )
    if getattr(request, "htmx", False):
        return HttpResponse(words, status=409, content_type="text/plain; charset=utf-8")
    context = {"words": words, "page_hospital": page_hospital, "back_to": _page_of(request)}
    return render(request, "409.html", context, status=409)


def _page_of(request) -> str:
    """The path of the page the request came from, on this site; else the worklist."""
    referer = urlsplit(request.headers.get("Referer", ""))
    if referer.netloc != request.get_host() or not referer.path.startswith("/"):
        return "/"
    return referer.path + (f"?{referer.query}" if referer.query else "")
