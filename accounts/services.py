"""Business operations on user accounts, shared by the admin and the commands.

Each saves and audits in one transaction. The audit names the user by public id and
lists changed field names only (never the new values: an email or a password typed
into a form does not belong in the trail).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from django.contrib.auth.password_validation import validate_password
from django.db import transaction

from accounts.models import User
from hospital import audit
from hospital.audit import Action
from hospital.models import Hospital, Membership
from hospital.services import change_action, create_membership, saved_fields, sync_staff_flag


def normalize_email(email: str) -> str:
    return User.objects.normalize_email((email or "").strip()).lower()


def create_user(
    user: User, *, hospital: Hospital, role: str, password: str | None = None, actor=None, request=None
) -> User:
    """Save a new user with their first membership.

    `password`, when given, is checked by the password validators (ValidationError)
    and set; the admin's creation form has already done both and passes None.
    """
    user.email = normalize_email(user.email)
    if password is not None:
        validate_password(password, user)
        user.set_password(password)
    with transaction.atomic():
        user.save()
        audit.record(Action.USER_CREATED, request=request, actor=actor, hospital=hospital, target=user)
        create_membership(Membership(user=user, hospital=hospital, role=role), actor=actor, request=request)
    return user


def update_user(user: User, changed: Iterable[str], *, actor=None, request=None) -> User:
    changed = sorted(set(changed))
    if not changed:  # a save that changed nothing read as a change in the trail (admin review)
        return user
    if "email" in changed:
        user.email = normalize_email(user.email)
    with transaction.atomic():
        # Only what this form changed: a stale form must not write back an "active" another
        # admin has since switched off (hospital.services.update_membership).
        user.save(update_fields=saved_fields(user, changed))
        staff = sync_staff_flag(user) if {"is_superuser", "is_staff"} & set(changed) else None
        extra = {} if staff is None else {"staff": staff}
        record_about_user(
            change_action(user, changed, "user"),
            user,
            request=request,
            actor=actor,
            fields=changed,
            **extra,
        )
    return user


def deactivate_user(user: User, *, actor=None, request=None) -> bool:
    """Deactivate once; the user's sessions stop working on their next request."""
    with transaction.atomic():
        if not User.objects.filter(pk=user.pk, is_active=True).update(is_active=False):
            return False
        user.is_active = False
        record_about_user(Action.USER_DEACTIVATED, user, request=request, actor=actor)
    return True


def set_password(user: User, password: str, *, actor=None, request=None) -> User:
    validate_password(password, user)
    user.set_password(password)
    with transaction.atomic():
        user.save(update_fields=["password"])
        record_password_set(user, actor=actor, request=request)
    return user


def record_password_set(user: User, *, actor=None, request=None) -> None:
    record_about_user(Action.USER_CHANGED, user, request=request, actor=actor, fields=["password"])


def unlock_user(user: User, *, actor=None, request=None) -> bool:
    """Lift a login lockout early (an admin who has checked who is asking): the account's,
    and every address's. Done and audited whether or not a lock could be seen: an address's
    lock lives in the cache, where the admin cannot see it."""
    from accounts.backends import forget_failures

    forget_failures(user)
    with transaction.atomic():
        User.objects.filter(pk=user.pk).update(locked_until=None, failed_login_count=0)
        user.refresh_from_db(fields=["locked_until", "failed_login_count"])
        record_about_user(Action.USER_CHANGED, user, request=request, actor=actor, fields=["locked_until"])
    return True


def hospitals_answering_for(user: User) -> list[Hospital]:
    """The hospitals an event about `user`'s account is filed under: every one the user
    works in now, since each one's admins answer for the account there (filed under one,
    the others never learned that their radiologist was deactivated or locked out); for
    someone who has left them all, every one they worked in (a dismissed employee's tries
    to come back belong in the trail of the hospitals that dismissed them)."""
    hospitals = Hospital.objects.distinct().order_by("name", "pk")
    # One filter() call: chained, the second condition could match another user's membership.
    working = list(hospitals.filter(memberships__user=user, memberships__is_active=True))
    return working or list(hospitals.filter(memberships__user=user))


def record_about_user(
    action: str, user: User, *, actor=None, request=None, detail_in: Callable[[Hospital], dict] | None = None, **fields
) -> None:
    """One event about `user`'s account in each hospital's trail (`hospitals_answering_for`),
    each with `fields` and what `detail_in(hospital)` adds there."""
    hospitals = hospitals_answering_for(user) or [None]  # a platform account: the request's hospital, if any
    events = [
        audit.build(
            action,
            request=request,
            actor=actor,
            hospital=h,
            target=user,
            **fields,
            **(detail_in(h) if detail_in and h else {}),
        )
        for h in hospitals
    ]
    audit.record_all(events)
