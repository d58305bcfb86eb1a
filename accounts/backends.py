from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.db.models import F
from django.utils import timezone

from accounts.models import User
from config.cache import count_request
from hospital.audit import client_ip
from hospital.tenancy import memberships_now

log = logging.getLogger(__name__)


class LockoutModelBackend(ModelBackend):
    """Email + password, refusing guesses after repeated failures, in two layers:

    - from one address: after LOGIN_LOCKOUT_THRESHOLD failures, that address may not try
      the account until LOGIN_LOCKOUT_SECONDS after the first of them, not even with the
      right password, so guessing
      cannot go on in the background. Other addresses are not refused: five wrong guesses
      from anywhere on the internet used to lock a doctor out of their own workstation;
    - from everywhere: after LOGIN_ACCOUNT_LOCKOUT_THRESHOLD failures in all, the account
      itself is locked (`locked_until`), which bounds guessing spread over many addresses.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        email = (username or kwargs.get("email") or "").strip().lower()
        if not email or password is None:
            return None
        user = User.objects.filter(email=email).first()
        # This attempt is counted before the password is checked: counted after, guesses
        # sent in parallel from one address were all checked while the count still said
        # "below the threshold" (about 20 per window instead of 5, the concurrency review).
        attempt = _address_failures(user, request, count=True) if user is not None and request is not None else 0
        if user is None or _account_locked(user) or (attempt or 0) > settings.LOGIN_LOCKOUT_THRESHOLD:
            # The cost of a real check, so that timing tells no one which emails are
            # accounts, nor which accounts are locked (they answered at once).
            User().set_password(password)
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            User.objects.filter(pk=user.pk).update(failed_login_count=0, locked_until=None)
            _forget_address_failures(user, request)  # earlier typos count no more
            return user
        register_failed_login(user, counter_down=attempt is None)
        return None

    def user_can_authenticate(self, user) -> bool:
        """Active, and a member of a hospital (platform operators excepted): ending every
        membership is how an admin ends a person's access. Refused here, the portal's and
        the admin's sign-in answer as to a wrong password, count the try and file it in the
        trail of the hospitals that ended it, and a session still open ends at its next
        request (diff review: refused after the password was checked, the sign-in said the
        password was right and recorded nothing, and the admin's sign-in let them in)."""
        if not super().user_can_authenticate(user):
            return False
        return user.is_superuser or bool(memberships_now(user))


def _account_locked(user: User) -> bool:
    return user.locked_until is not None and user.locked_until > timezone.now()


def is_locked(user: User, request=None) -> bool:
    """Locked for everyone, or for the address this request comes from."""
    if _account_locked(user):
        return True
    failures = _address_failures(user, request, count=False) if request is not None else 0
    return (failures or 0) >= settings.LOGIN_LOCKOUT_THRESHOLD


def register_failed_login(user: User, *, counter_down: bool = False) -> None:
    """One more failure against the account itself (the address's was counted already)."""
    User.objects.filter(pk=user.pk).update(failed_login_count=F("failed_login_count") + 1)
    user.refresh_from_db(fields=["failed_login_count"])
    # Without the per-address counter (the cache unreachable), the account locks at the
    # per-address threshold, as one lock for all: guessing must not gain from an outage.
    threshold = settings.LOGIN_LOCKOUT_THRESHOLD if counter_down else settings.LOGIN_ACCOUNT_LOCKOUT_THRESHOLD
    if user.failed_login_count >= threshold:
        until = timezone.now() + timedelta(seconds=settings.LOGIN_LOCKOUT_SECONDS)
        User.objects.filter(pk=user.pk).update(locked_until=until, failed_login_count=0)


def _address_key(user: User, request) -> str:
    """Keyed by the account's public id, never by the email typed, by the account's current
    round (`forget_failures` starts a new one) and by the request's address."""
    return f"login-failures:{user.code}:{cache.get(_round_key(user), '')}:{client_ip(request) or 'unknown'}"


def _address_failures(user: User, request, *, count: bool) -> int | None:
    """Login attempts to `user` from the request's address since its last success, in the
    LOGIN_LOCKOUT_SECONDS since the first of them (`count`: this one included); None when
    the cache cannot be reached."""
    try:
        key = _address_key(user, request)
        if count:
            return count_request(cache, key, settings.LOGIN_LOCKOUT_SECONDS)
        return int(cache.get(key) or 0)
    except Exception:
        log.warning("login failure counter unreachable; the account-wide lock takes its place")
        return None


def _forget_address_failures(user: User, request) -> None:
    if request is None:
        return
    try:
        cache.delete(_address_key(user, request))
    except Exception:
        log.warning("login failure counter unreachable; it expires on its own")


def forget_failures(user: User) -> None:
    """Every address may try again at once (an admin unlocking the account)."""
    try:
        cache.set(_round_key(user), uuid.uuid4().hex, timeout=settings.LOGIN_LOCKOUT_SECONDS)
    except Exception:
        log.warning("login failure counter unreachable; its locks end on their own")


def _round_key(user: User) -> str:
    return f"login-failures-round:{user.code}"
