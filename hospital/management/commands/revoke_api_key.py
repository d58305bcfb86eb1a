from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from hospital.management.commands._helpers import hospital_by_slug, superuser_by_email
from hospital.models import KEY_PREFIX, IntegrationKey
from hospital.services import revoke_integration_key

PREFIX_LENGTH = len(KEY_PREFIX) + 8  # as IntegrationKey keeps it


class Command(BaseCommand):
    help = (
        "Revoke an EMR's integration key at once (a key leaked, a system retired): from then on every call "
        "with it is refused (401). The hospital admin does the same in the admin; this is for an operator "
        "when no admin can be reached. Audited under the hospital, with the operator named."
    )

    def add_arguments(self, parser):
        parser.add_argument("--hospital", required=True, help="The hospital's slug.")
        parser.add_argument("--prefix", required=True, help="The key's prefix (plr_...), as the admin lists it.")
        parser.add_argument("--actor", required=True, help="Email of the superuser revoking it, for the audit trail.")

    def handle(self, *args, hospital: str, prefix: str, actor: str, **options):
        operator = superuser_by_email(actor)
        target = hospital_by_slug(hospital, deactivated_too=True)  # revoked before it comes back
        # As the admin shows it ("plr_AbCd1234…"), bare, or the whole leaked key: only its
        # prefix is read, and only the prefix is ever written back (operator review: the
        # whole key was printed in the refusal).
        given = prefix.strip().rstrip("…")[:PREFIX_LENGTH]
        key = IntegrationKey.objects.filter(hospital=target, prefix=given).first()
        if key is None:
            raise CommandError(f"{target.name} has no integration key with prefix {given!r}.")
        if not revoke_integration_key(key, actor=operator):
            self.stdout.write(
                f"The key {key.name!r} ({key.prefix}) of {target.name} was already revoked, on "
                f"{key.revoked_at:%Y-%m-%d %H:%M} UTC."
            )
            return
        self.stdout.write(
            f"Revoked the key {key.name!r} ({key.prefix}) of {target.name}: every call with it is now refused."
        )
