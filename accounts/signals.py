"""Audit hooks for Django's authentication signals (portal and admin logins alike)."""

from __future__ import annotations

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from hospital import audit


@receiver(user_logged_in)
def _audit_login(sender, request, user, **kwargs) -> None:
    audit.record(audit.Action.LOGIN, request=request, actor=user, target=user)


@receiver(user_logged_out)
def _audit_logout(sender, request, user, **kwargs) -> None:
    if user is not None:
        audit.record(audit.Action.LOGOUT, request=request, actor=user, target=user)


@receiver(user_login_failed)
def _audit_failed_login(sender, credentials, request=None, **kwargs) -> None:
    # Only an existing account is named (by its public id): free text typed into the
    # email box, which may be a mistyped password, never lands in the audit log.
    from accounts.models import User

    email = str(credentials.get("username") or credentials.get("email") or "").strip().lower()
    target = User.objects.filter(email=email).first() if email else None
    audit.record(audit.Action.LOGIN_FAILED, request=request, target=target, outcome=audit.Outcome.FAILURE)
