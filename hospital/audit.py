"""The audit trail: one function that every app calls to record what happened.

`detail` must never carry PHI (patient names, IDs, birth dates): callers pass public
ids, counts, labels and reasons only.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import models

from hospital.models import AuditEvent, Hospital, IntegrationKey, Membership, Role

Outcome = AuditEvent.Outcome


class Action(models.TextChoices):
    LOGIN = "auth.login", "Logged in"
    LOGIN_FAILED = "auth.login_failed", "Failed login"
    LOGOUT = "auth.logout", "Logged out"
    PASSWORD_CHANGED = "auth.password_changed", "Password changed"
    HOSPITAL_SWITCHED = "auth.hospital_switched", "Switched hospital"
    USER_CREATED = "user.created", "User created"
    USER_CHANGED = "user.changed", "User changed"
    USER_DEACTIVATED = "user.deactivated", "User deactivated"
    USER_REACTIVATED = "user.reactivated", "User reactivated"
    MEMBERSHIP_CREATED = "membership.created", "Membership created"
    MEMBERSHIP_CHANGED = "membership.changed", "Membership changed"
    MEMBERSHIP_DEACTIVATED = "membership.deactivated", "Membership deactivated"
    MEMBERSHIP_REACTIVATED = "membership.reactivated", "Membership reactivated"
    KEY_CREATED = "key.created", "Integration key created"
    KEY_CHANGED = "key.changed", "Integration key changed"
    KEY_REVOKED = "key.revoked", "Integration key revoked"
    HOSPITAL_CREATED = "hospital.created", "Hospital created"
    HOSPITAL_CHANGED = "hospital.changed", "Hospital changed"
    CONSENT_CHANGED = "hospital.consent_changed", "Training consent changed"
    STUDY_UPLOADED = "study.uploaded", "Study uploaded"
    STUDY_UPLOAD_REJECTED = "study.upload_rejected", "Upload rejected"
    STUDY_ANALYSED_AGAIN = "study.analysed_again", "Study queued to be analysed again"
    STUDY_WITHDRAWN = "study.withdrawn", "Study withdrawn as filed in error"
    STUDY_VIEWED = "study.viewed", "Study viewed"
    STUDY_LISTED = "study.listed", "Studies listed"
    IMAGE_VIEWED = "study.image_viewed", "Image viewed"
    PREDICTION_MADE = "prediction.made", "Prediction made"
    PREDICTION_FAILED = "prediction.failed", "Prediction failed"
    REVIEW_SAVED = "review.saved", "Review saved"
    MODEL_REGISTERED = "model.registered", "Model registered"
    MODEL_COMPARED = "model.compared", "Model compared with another"
    MODEL_PROMOTED = "model.promoted", "Model promoted"
    MODEL_PROMOTION_REFUSED = "model.promotion_refused", "Model promotion refused"
    MODEL_ROLLED_BACK = "model.rolled_back", "Model rolled back"
    MODEL_SHADOW_CHANGED = "model.shadow_changed", "Shadow mode changed"
    TRAINING_EXPORTED = "training.exported", "Training set exported"
    MODEL_RETRAINED = "model.retrained", "Model retrained"
    AUDIT_VIEWED = "audit.viewed", "Audit log viewed"
    ACCESS_DENIED = "access.denied", "Access denied"


def client_ip(request) -> str | None:
    """The caller's address: the peer's, or the X-Real-IP header when the peer is one of
    `TRUSTED_PROXIES` (the nginx in front of gunicorn, which sets it) or a unix socket.

    Taken from any peer, the header let a caller choose its address: a new one for each
    guess got past the per-address login lock, and the trail kept the address it chose
    (PHI and security review, probed against gunicorn directly, as another pod reaches it).
    """
    if request is None:
        return None
    meta = getattr(request, "META", {})
    peer = meta.get("REMOTE_ADDR") or None
    forwarded = meta.get("HTTP_X_REAL_IP", "").strip()
    if forwarded and _is_trusted_proxy(peer) and _is_address(forwarded):
        return forwarded
    return peer


def _is_trusted_proxy(peer: str | None) -> bool:
    trusted = settings.TRUSTED_PROXIES
    if peer is None:
        # gunicorn bound to a unix socket, which only this host can reach (gunicorn trusts
        # it too); trusted unless no proxy is (TRUSTED_PROXIES set to nothing).
        return bool(trusted)
    if "*" in trusted:
        return True
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(trusted)))


@lru_cache(maxsize=4)
def _networks(trusted: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    # Parsed once, not for every request that names its caller (each login, each event).
    return tuple(ipaddress.ip_network(network, strict=False) for network in trusted)


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def record(action: str, **fields: Any) -> AuditEvent:
    """Append one event (`build`'s arguments). Actor, key and hospital default to what
    the request carries."""
    event = build(action, **fields)
    event.save()
    return event


def record_all(events: list[AuditEvent]) -> None:
    """Append events made by `build` in one insert (a worker's batch of predictions)."""
    AuditEvent.objects.bulk_create(events)


def build(
    action: str,
    *,
    request=None,
    actor=None,
    key: IntegrationKey | None = None,
    hospital: Hospital | None = None,
    target: Any = None,
    outcome: str = Outcome.SUCCESS,
    **detail: Any,
) -> AuditEvent:
    """The event `record` appends, not saved yet."""
    if request is not None:
        if actor is None and getattr(getattr(request, "user", None), "is_authenticated", False):
            actor = request.user if getattr(request.user, "pk", None) else None
        if key is None and isinstance(getattr(request, "auth", None), IntegrationKey):
            key = request.auth
        if hospital is None:
            hospital = getattr(request, "hospital", None)
    if hospital is None and key is not None:
        hospital = key.hospital
    return AuditEvent(
        action=str(action),
        actor_user=actor if getattr(actor, "pk", None) else None,
        actor_key=key,
        hospital=hospital,
        target_type=_target_type(target),
        target_id=str(getattr(target, "code", "") or "") if target is not None else "",
        outcome=str(outcome),
        client_ip=client_ip(request),
        detail=detail,
    )


def study_codes(studies) -> list[str]:
    """The codes of the studies a list showed, for its event's `studies`: a count alone
    could not answer "who saw patient X's study?" for a worklist page or an EMR's feed,
    each row of which carries the patient's details and result."""
    return [str(study.code) for study in studies]


def _target_type(target: Any) -> str:
    if target is None:
        return ""
    return target._meta.model_name if hasattr(target, "_meta") else type(target).__name__.lower()


# What a hospital's audit log calls each kind of target, beside the target's name.
TARGET_KINDS = {"integrationkey": "EMR key", "modelversion": "model"}


def name_targets(events: list[AuditEvent], hospital: Hospital) -> None:
    """Set `target_name` on each event whose target this hospital can name: a user or a
    membership of this hospital (by email), one of its EMR keys (by its name now), or the
    hospital itself; one query a kind. Others (studies, whose only names are PHI, and
    anything of another hospital, such as the target of a refused request) keep their
    public code, so no other hospital's user or key is named in this one's log."""
    wanted: dict[str, set[str]] = {}
    for event in events:
        event.target_kind = TARGET_KINDS.get(event.target_type, event.target_type)
        if event.target_id:
            wanted.setdefault(event.target_type, set()).add(event.target_id)
    names: dict[tuple[str, str], str] = {}
    if codes := wanted.get("user"):
        users = get_user_model().objects.filter(code__in=codes, memberships__hospital=hospital).distinct()
        names.update((("user", str(code)), email) for code, email in users.values_list("code", "email"))
    if codes := wanted.get("membership"):
        # By its user only: the role today is not the one an older event set (admin review).
        memberships = Membership.objects.filter(code__in=codes, hospital=hospital)
        rows = memberships.values_list("code", "user__email")
        names.update((("membership", str(code)), email) for code, email in rows)
    if codes := wanted.get("integrationkey"):
        keys = IntegrationKey.objects.filter(code__in=codes, hospital=hospital)
        names.update((("integrationkey", str(code)), name) for code, name in keys.values_list("code", "name"))
    if str(hospital.code) in wanted.get("hospital", ()):
        names[("hospital", str(hospital.code))] = hospital.name
    for event in events:
        event.target_name = names.get((event.target_type, event.target_id), "")
        if event.target_type == "modelversion":  # not a hospital's: named by its event
            event.target_name = str(event.detail.get("name", ""))
        # A membership's event records the role it left; shown, as today's may differ.
        role = event.detail.get("role") if event.target_type == "membership" else None
        event.role_label = Role(role).label if role in Role.values else ""
