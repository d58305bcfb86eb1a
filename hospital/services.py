"""Business operations on hospitals, memberships and integration keys.

The Django admin and the management commands both call these, so every change is
saved and audited the same way whoever makes it. `actor` is the user doing it (None
for an operator running a command on the server); `request` adds the client IP.
Audit details hold field names, roles and public ids only, never values typed by users.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from hospital import audit
from hospital.audit import Action
from hospital.models import Hospital, IntegrationKey, Membership, Role

CONSENT_FIELD = "shares_reviews_for_training"


def create_hospital(hospital: Hospital, *, actor=None, request=None) -> Hospital:
    with transaction.atomic():
        hospital.save()
        audit.record(
            Action.HOSPITAL_CREATED,
            request=request,
            actor=actor,
            hospital=hospital,
            target=hospital,
            slug=hospital.slug,
        )
    return hospital


def update_hospital(hospital: Hospital, changed: Iterable[str], *, actor=None, request=None) -> Hospital:
    """Save a changed hospital. Training consent gets its own audit action."""
    changed = sorted(set(changed))
    with transaction.atomic():
        # Only what the form changed: a page opened before consent was withdrawn wrote the
        # stale "consents" back with a time zone change, recorded as that admin's decision.
        hospital.save(update_fields=saved_fields(hospital, changed))
        if CONSENT_FIELD in changed:
            audit.record(
                Action.CONSENT_CHANGED,
                request=request,
                actor=actor,
                hospital=hospital,
                target=hospital,
                shares_reviews_for_training=hospital.shares_reviews_for_training,
            )
        others = [name for name in changed if name != CONSENT_FIELD]
        if others:
            audit.record(
                Action.HOSPITAL_CHANGED, request=request, actor=actor, hospital=hospital, target=hospital, fields=others
            )
    return hospital


def sync_staff_flag(user) -> bool | None:
    """`is_staff` follows the role: a user with an active hospital_admin membership may
    open the admin, nobody else (platform superusers aside). Returns the new flag if it
    changed, else None."""
    should_be_staff = user.is_superuser or (
        Membership.objects.filter(
            user=user, role=Role.HOSPITAL_ADMIN, is_active=True, hospital__is_active=True
        ).exists()
    )
    if user.is_staff == should_be_staff:
        return None
    type(user).objects.filter(pk=user.pk).update(is_staff=should_be_staff)
    user.is_staff = should_be_staff
    return should_be_staff


def hospitals_left_without_admin(*, memberships: Iterable[int] = (), users: Iterable[int] = ()) -> list[Hospital]:
    """Hospitals that would have no active hospital admin if these memberships (ids)
    stopped being admin ones, or these users (ids) were deactivated.

    Inside a transaction, the hospitals concerned are locked first (until it commits), so
    two admins removing each other at the same moment run one after the other and the
    second is judged by what the first left: checked unlocked, both saw the other still
    there, and the hospital was left with no admin (concurrency review).

    A hospital admin who demotes or deactivates the last admin (themselves included)
    locks their hospital out of managing its own staff until a platform operator steps
    in; the admin refuses such a change. Platform operators may make it (a hospital
    leaving Pleura)."""
    memberships, users = set(memberships), set(users)
    _lock_hospitals_of(memberships, users)
    admins = Membership.objects.active().filter(role=Role.HOSPITAL_ADMIN)  # active(): accounts too
    losing = admins.filter(pk__in=memberships) | admins.filter(user__in=users)
    left_without = []
    for hospital in Hospital.objects.filter(pk__in=losing.values("hospital")).order_by("name"):
        remaining = admins.filter(hospital=hospital).exclude(pk__in=memberships).exclude(user__in=users)
        if not remaining.exists():
            left_without.append(hospital)
    return left_without


def _lock_hospitals_of(memberships: set[int], users: set[int]) -> None:
    if not transaction.get_connection().in_atomic_block:
        return  # nothing would hold the lock
    concerned = Membership.objects.filter(Q(pk__in=memberships) | Q(user__in=users)).values("hospital")
    list(Hospital.objects.select_for_update().filter(pk__in=concerned).order_by("pk").values_list("pk", flat=True))


def left_without_admin_message(hospitals: list[Hospital]) -> str:
    names = ", ".join(hospital.name for hospital in hospitals)
    return f"{names} would be left without an active hospital admin. Make someone else its admin first."


def create_membership(membership: Membership, *, actor=None, request=None) -> Membership:
    with transaction.atomic():
        membership.save()
        _record_membership(Action.MEMBERSHIP_CREATED, membership, actor=actor, request=request)
    return membership


def update_membership(membership: Membership, changed: Iterable[str], *, actor=None, request=None) -> Membership:
    """Save only the `changed` fields: a form opened before another admin removed the
    member wrote its stale "active" back with a role change, and let them back in."""
    changed = sorted(set(changed))
    if not changed:  # a save that changed nothing read as a change in the trail (admin review)
        return membership
    with transaction.atomic():
        membership.save(update_fields=saved_fields(membership, changed))
        action = change_action(membership, changed, "membership")
        _record_membership(action, membership, actor=actor, request=request, fields=changed)
    return membership


# (changed, reactivated, deactivated) for each kind of account row.
_CHANGE_ACTIONS = {
    "user": (Action.USER_CHANGED, Action.USER_REACTIVATED, Action.USER_DEACTIVATED),
    "membership": (Action.MEMBERSHIP_CHANGED, Action.MEMBERSHIP_REACTIVATED, Action.MEMBERSHIP_DEACTIVATED),
}


def change_action(instance, changed: list[str], kind: str) -> str:
    """The audit action of a saved change to a user or membership (`kind`): switched off
    or on, it is a deactivation or a reactivation, not a plain change (admin review)."""
    plain, reactivated, deactivated = _CHANGE_ACTIONS[kind]
    if "is_active" not in changed:
        return plain
    return reactivated if instance.is_active else deactivated


def saved_fields(instance, changed: Iterable[str]) -> list[str]:
    """The concrete fields among `changed` (a form's changed_data also names many-to-many
    relations, saved apart), for save(update_fields=...)."""
    concrete = {field.name for field in instance._meta.concrete_fields}
    return [name for name in changed if name in concrete]


def deactivate_membership(membership: Membership, *, actor=None, request=None) -> bool:
    """Deactivate once: a second call (or a concurrent one) changes and records nothing."""
    with transaction.atomic():
        if not Membership.objects.filter(pk=membership.pk, is_active=True).update(is_active=False):
            return False
        membership.is_active = False
        _record_membership(Action.MEMBERSHIP_DEACTIVATED, membership, actor=actor, request=request)
    return True


def _record_membership(action: str, membership: Membership, *, actor, request, **detail) -> None:
    """Re-derive the user's staff flag from their memberships, then audit the change."""
    staff = sync_staff_flag(membership.user)
    audit.record(
        action,
        request=request,
        actor=actor,
        hospital=membership.hospital,
        target=membership,
        user=str(membership.user.code),
        role=membership.role,
        **detail,
        **_staff_detail(staff),
    )


def issue_integration_key(key: IntegrationKey, *, actor=None, request=None) -> str:
    """Save a new key (hospital and name set) and return its raw value, shown once."""
    raw_key = key.set_new_secret()
    if getattr(actor, "pk", None):
        key.created_by = actor
    with transaction.atomic():
        key.save()
        expiry = {"expires_at": key.expires_at.isoformat()} if key.expires_at else {}
        audit.record(
            Action.KEY_CREATED,
            request=request,
            actor=actor,
            hospital=key.hospital,
            target=key,
            prefix=key.prefix,
            **expiry,
        )
    return raw_key


def update_integration_key(key: IntegrationKey, changed: Iterable[str], *, actor=None, request=None) -> IntegrationKey:
    """Save only the `changed` fields, as for memberships: the whole row written back from
    a form opened before a revocation brought the revoked key back (code review)."""
    changed = sorted(set(changed))
    if not changed:
        return key
    with transaction.atomic():
        key.save(update_fields=saved_fields(key, changed))
        audit.record(
            Action.KEY_CHANGED, request=request, actor=actor, hospital=key.hospital, target=key, fields=changed
        )
    return key


def revoke_integration_key(key: IntegrationKey, *, actor=None, request=None) -> bool:
    """Revoke once: revoking a revoked key (or losing a race to revoke it) records nothing."""
    with transaction.atomic():
        revoked = IntegrationKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        key.refresh_from_db(fields=["revoked_at"])
        if not revoked:
            return False
        audit.record(
            Action.KEY_REVOKED, request=request, actor=actor, hospital=key.hospital, target=key, prefix=key.prefix
        )
    return True


def _staff_detail(staff: bool | None) -> dict:
    return {} if staff is None else {"staff": staff}
