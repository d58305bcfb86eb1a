"""The tenant gate for the REST API: authentication by integration key, a base view
that resolves the hospital once and starts every queryset from it, role checks per
HTTP method, and error bodies a human can read."""

from __future__ import annotations

import logging
import time
from datetime import UTC, timedelta

from django.core.cache import caches
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404
from django.utils import timezone
from django.utils.cache import add_never_cache_headers, patch_cache_control
from rest_framework import exceptions, permissions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle

from config.cache import count_request
from config.errors import DATABASE_RETRY_AFTER_SECONDS, ServiceUnavailable
from hospital.models import Hospital, IntegrationKey, Role, hash_api_key
from hospital.tenancy import NotInThisHospital, record_denied

# Keys can do what an EMR integration needs: send studies and read results back.
INTEGRATION_ROLE = "integration"
READ_ROLES = frozenset({Role.DOCTOR, Role.RADIOLOGIST, Role.HOSPITAL_ADMIN, INTEGRATION_ROLE})
UPLOAD_ROLES = frozenset({Role.DOCTOR, Role.RADIOLOGIST, INTEGRATION_ROLE})
LAST_USED_RESOLUTION = timedelta(minutes=1)
DATABASE_UNAVAILABLE_MESSAGE = (
    "Pleura's database is unavailable just now, so nothing was read or stored. Please try again shortly."
)

log = logging.getLogger(__name__)


class IntegrationPrincipal:
    """`request.user` for a call made with an integration key: a system, not a person."""

    is_authenticated = True
    is_anonymous = False
    is_superuser = False
    is_staff = False
    pk = None

    def __init__(self, key: IntegrationKey):
        self.key = key

    def __str__(self) -> str:
        return f"integration key {self.key.prefix}"


class IntegrationKeyAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <key>' with a single key.")
        raw_key = header[1].decode("latin-1")
        key = IntegrationKey.find_usable(raw_key)
        if key is None:
            _record_unusable_key(request._request, raw_key)  # DRF's request is still authenticating
            raise exceptions.AuthenticationFailed(
                "This integration key is not valid, has expired or has been revoked: ask your hospital's "
                "Pleura admin for a new one."
            )
        _note_use(key)
        return IntegrationPrincipal(key), key

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="pleura"'


# A revoked key is recorded at most once a minute: an EMR left sending with one sends it
# with every retry, and the trail needs to know that it does, not each time.
REVOKED_KEY_RECORD_SECONDS = 60


def _record_unusable_key(request, raw_key: str) -> None:
    """A revoked or expired key (or one of a deactivated hospital) still in use: in its hospital's
    trail, since a decommissioned EMR still sending, or a key that leaked, is theirs to
    chase. A key that never existed names no hospital, and is not recorded."""
    key = IntegrationKey.objects.filter(key_hash=hash_api_key(raw_key)).select_related("hospital").first()
    if key is None:
        return
    # Named by its hash, not its pk: a test database hands pks out again, Redis outlives it.
    recorded_lately = f"pleura:unusable-key-recorded:{key.key_hash[:32]}"
    try:
        first_this_minute = caches["default"].add(recorded_lately, 1, REVOKED_KEY_RECORD_SECONDS)
    except Exception:  # whatever the cache's client raises when Redis is down: record it
        first_this_minute = True
    if first_this_minute:
        reason = "revoked key" if key.is_revoked else "expired key" if key.is_expired else "inactive hospital"
        record_denied(request, hospital=key.hospital, key=key, reason=reason)


def _note_use(key: IntegrationKey) -> None:
    """Record when a key was last used, at most once a minute: an EMR sending a study a
    second must not pay a database write for each."""
    now = timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        IntegrationKey.objects.filter(pk=key.pk).update(last_used_at=now)


class _AtMostEvery:
    """A warning logged at most once every `seconds` by this process: during an outage
    every request meets the same failure, and one line a minute says so."""

    def __init__(self, seconds: float, clock=time.monotonic):
        self.seconds = seconds
        self.clock = clock
        self._last = -seconds

    def emit(self, message: str, *args) -> None:
        now = self.clock()
        if now - self._last >= self.seconds:
            self._last = now
            log.warning(message, *args)


_cache_down_warnings = _AtMostEvery(60.0)


class IntegrationKeyThrottle(SimpleRateThrottle):
    """Per-key request rate (API_KEY_THROTTLE_RATE); portal sessions are not throttled here.

    Requests are counted in fixed windows of the rate's period (a minute for
    "600/min"), one atomic increment each in the shared cache. DRF's own throttle reads
    a key's list of request times and writes it back, so concurrent requests of one key
    read the same list and overwrite each other: an EMR posting over many connections
    was counted a fraction of its requests. A fixed window lets a caller send up to
    twice the rate across a window's boundary, never more.
    """

    scope = "integration_key"

    def get_cache_key(self, request, view):
        if isinstance(request.auth, IntegrationKey):
            return self.cache_format % {"scope": self.scope, "ident": request.auth.pk}
        return None

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        self.now = self.timer()
        window = int(self.now // self.duration)
        self.window_ends_at = (window + 1) * self.duration
        try:
            # The counter outlives its window by a second, so a slow request never restarts it.
            count = count_request(self.cache, f"{self.key}:{window}", self.duration + 1)
        except Exception as exc:  # whatever the cache's client raises when Redis is down
            # Open, not shut: a rate limit that cannot count must not stop EMRs sending
            # studies (the upload path needs only the database and the storage; the broker
            # being down is already covered by the sweeper).
            _cache_down_warnings.emit("API rate limit not applied: the cache is unreachable (%s)", type(exc).__name__)
            return True
        return count <= self.num_requests

    def wait(self) -> float:
        """Seconds until the window ends (DRF puts it in the 429's Retry-After)."""
        return max(0.0, self.window_ends_at - self.timer())


def resolve_api_tenant(request) -> tuple[Hospital | None, str | None]:
    """(hospital, role) for an API caller: the key's hospital, or the session's active one."""
    if isinstance(request.auth, IntegrationKey):
        return request.auth.hospital, INTEGRATION_ROLE
    membership = getattr(request._request, "membership", None)
    if membership is None:
        return None, None
    return membership.hospital, membership.role


class HasHospitalRole(permissions.BasePermission):
    """Outsiders (no hospital) get 404; members whose role lacks the method get 403."""

    def has_permission(self, request, view) -> bool:
        hospital, role = resolve_api_tenant(request)
        if hospital is None:
            raise Http404
        allowed = view.roles_for_method(request.method)
        if role not in allowed:
            raise exceptions.PermissionDenied("Your role does not allow this.")
        return True


class TenantAPIMixin:
    """Base for every tenant-owned endpoint: `self.hospital` is set once, and
    `get_queryset()` must start from `self.tenant_queryset(...)`."""

    permission_classes = [permissions.IsAuthenticated, HasHospitalRole]
    throttle_classes = [IntegrationKeyThrottle]
    read_roles = READ_ROLES
    write_roles = UPLOAD_ROLES

    def roles_for_method(self, method: str) -> frozenset[str]:
        return self.read_roles if method in permissions.SAFE_METHODS else self.write_roles

    def dispatch(self, request, *args, **kwargs):
        # The API speaks UTC to every caller: a portal session's hospital time zone
        # (hospital.middleware) is for its pages. Overridden, not activated: activated, it
        # stayed the thread's zone for the next request (one with no hospital).
        with timezone.override(UTC):
            return super().dispatch(request, *args, **kwargs)

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self.hospital, self.role = resolve_api_tenant(request)

    def tenant_queryset(self, queryset):
        return queryset.for_hospital(self.hospital)

    def finalize_response(self, request, response, *args, **kwargs):
        """Kept by no cache: answers carry accession numbers, review notes and images, which a
        shared workstation's browser (the browsable API) or a proxy kept after logout."""
        response = super().finalize_response(request, response, *args, **kwargs)
        if "Cache-Control" not in response:
            add_never_cache_headers(response)
            patch_cache_control(response, private=True)
        return response


def exception_handler(exc, context):
    """DRF's handler, with every error body reduced to {"detail": "<words>"}, and an
    outage (a database that cannot be reached, a `ServiceUnavailable`) answered 503 with
    Retry-After, which EMRs retry."""
    # Imported here: rest_framework.views loads the authentication classes of this
    # module while it initializes, so a top-level import is circular.
    from rest_framework.views import exception_handler as drf_exception_handler
    from rest_framework.views import set_rollback

    if isinstance(exc, OperationalError | InterfaceError):
        view = type(context.get("view")).__name__
        log.error("database unavailable in %s (%s)", view, type(exc).__name__, exc_info=exc)
        exc = ServiceUnavailable(DATABASE_UNAVAILABLE_MESSAGE, DATABASE_RETRY_AFTER_SECONDS)
    if isinstance(exc, ServiceUnavailable):
        set_rollback()
        return Response({"detail": exc.detail}, status=503, headers={"Retry-After": str(exc.retry_after_seconds)})
    if isinstance(exc, exceptions.PermissionDenied | DjangoPermissionDenied):
        record_denied(context["request"])
    elif isinstance(exc, NotInThisHospital):
        exc.record(context["request"])
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(response.data, dict) and set(response.data) == {"detail"}:
        return response
    return Response({"detail": _flatten(response.data)}, status=response.status_code, headers=response.headers)


def _flatten(data) -> str:
    if isinstance(data, dict):
        return "; ".join(f"{field}: {_flatten(value)}" for field, value in data.items())
    if isinstance(data, list):
        return " ".join(_flatten(item) for item in data)
    return str(data)
