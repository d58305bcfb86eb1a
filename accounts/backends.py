from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.db.models import F
from django.utils import timezone

from accounts.models import User


class LockoutModelBackend(ModelBackend):
    """Email + password, refusing accounts locked after repeated failures.

    A locked account is refused even with the right password until the lock expires,
    so guessing cannot continue in the background.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        email = (username or kwargs.get("email") or "").strip().lower()
        if not email or password is None:
            return None
        user = User.objects.filter(email=email).first()
        if user is None or is_locked(user):
            # The cost of a real check, so that timing tells no one which emails are
            # accounts, nor which accounts are locked (they answered at once).
            User().set_password(password)
            return None
        if user.check_password(password) and self.user_can_authenticate(user):
            User.objects.filter(pk=user.pk).update(failed_login_count=0, locked_until=None)
            return user
        register_failed_login(user)
        return None


def is_locked(user: User) -> bool:
    return user.locked_until is not None and user.locked_until > timezone.now()


def register_failed_login(user: User) -> None:
    User.objects.filter(pk=user.pk).update(failed_login_count=F("failed_login_count") + 1)
    user.refresh_from_db(fields=["failed_login_count"])
    if user.failed_login_count >= settings.LOGIN_LOCKOUT_THRESHOLD:
        until = timezone.now() + timedelta(seconds=settings.LOGIN_LOCKOUT_SECONDS)
        User.objects.filter(pk=user.pk).update(locked_until=until, failed_login_count=0)
