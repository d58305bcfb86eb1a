"""Audit hooks for Django's authentication signals (portal and admin logins alike)."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from hospital import audit
from hospital.tenancy import active_memberships, resolve_membership


def _opened_hospital(request, user):
    # Filed under the hospital the new session opens on, so its admins see it: the one the
    # session names (accounts.views.PleuraLoginView), else the first.
    if request is not None and getattr(request, "user", None) == user:  # login() sets it where it can
        membership = resolve_membership(request)
    else:
        membership = active_memberships(user).first() if user is not None else None
    return membership.hospital if membership else None


# A session is in the trail of every hospital the person works in, as any event about their
# account is (README): filed under the one it opened alone, the others read their films
# being opened in a session that never began, and got a login with no logout (admin review).


@receiver(user_logged_in)
def _audit_login(sender, request, user, **kwargs) -> None:
    from accounts.services import record_about_user

    opened = _opened_hospital(request, user)
    # Each trail says whether the session opened in its own hospital, never which other one:
    # its admins would learn which other hospital employs their radiologist (diff review).
    record_about_user(
        audit.Action.LOGIN, user, actor=user, request=request,
        detail_in=lambda hospital: {"opened": "this hospital" if hospital == opened else "another hospital"},
    )  # fmt: skip


@receiver(user_logged_out)
def _audit_logout(sender, request, user, **kwargs) -> None:
    from accounts.services import record_about_user

    if user is not None:
        record_about_user(audit.Action.LOGOUT, user, actor=user, request=request)


@receiver(user_login_failed)
def _audit_failed_login(sender, credentials, request=None, **kwargs) -> None:
    # Only an existing account is named (by its public id): free text typed into the
    # email box, which may be a mistyped password, never lands in the audit log.
    from accounts.backends import is_locked
    from accounts.models import User

    email = str(credentials.get("username") or credentials.get("email") or "").strip().lower()
    target = User.objects.filter(email=email).first() if email else None
    locked = {"locked": True} if target is not None and is_locked(target, request) else {}
    from accounts.services import record_about_user

    if target is None:
        audit.record(audit.Action.LOGIN_FAILED, request=request, outcome=audit.Outcome.FAILURE)
        return
    record_about_user(audit.Action.LOGIN_FAILED, target, request=request, outcome=audit.Outcome.FAILURE, **locked)
