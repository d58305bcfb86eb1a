"""Shared by the operations commands: lookups that fail with a sentence, not a traceback."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from hospital.models import Hospital


def hospital_by_slug(slug: str, *, deactivated_too: bool = False) -> Hospital:
    """The hospital of `slug`; a deactivated one only where the command is for it too (its
    trail's export, a leaked key's revocation before it comes back)."""
    hospital = Hospital.objects.filter(slug=slug).first()
    if hospital is None:
        raise CommandError(f"No hospital with slug {slug!r}. Create it first with create_hospital.")
    if not hospital.is_active and not deactivated_too:
        raise CommandError(f"The hospital {slug!r} is deactivated: reactivate it in the admin first.")
    return hospital


def superuser_by_email(email: str):
    """The active superuser an operations command acts as, named in the trail it writes."""
    from django.contrib.auth import get_user_model

    operator = get_user_model().objects.filter(email=email.strip().lower(), is_active=True).first()
    if operator is None or not operator.is_superuser:
        raise CommandError(f"--actor must be the email of an active superuser, not {email!r}.")
    return operator


def validation_message(error: ValidationError) -> str:
    if hasattr(error, "error_dict"):
        return " ".join(f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items())
    return " ".join(error.messages)
