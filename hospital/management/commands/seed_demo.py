"""Demo data for `make run`: two hospitals with a doctor, a radiologist and an admin each.

Idempotent: a second run creates nothing new, and restores a demo user's password,
membership or active flag if someone changed them, so the printed logins always work.
"""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from accounts.models import User
from accounts.services import create_user, set_password
from hospital.models import Hospital, Membership, Role
from hospital.services import create_hospital, create_membership

DEMO_PASSWORD = "pleura-demo-2026"
DEMO_HOSPITALS = [
    ("demo-general", "Demo General Hospital"),
    ("demo-childrens", "Demo Children's Hospital"),
]
DEMO_ROLES = [Role.DOCTOR, Role.RADIOLOGIST, Role.HOSPITAL_ADMIN]


def demo_logins() -> list[tuple[str, str, str]]:
    """(hospital name, role label, email) for every demo user."""
    return [(name, role.label, _email(role, slug)) for slug, name in DEMO_HOSPITALS for role in DEMO_ROLES]


def _email(role: Role, slug: str) -> str:
    return f"{role.value.replace('_', '-')}@{slug}.example"


class Command(BaseCommand):
    help = "Create (or repair) the demo hospitals and users, and print their logins."

    def add_arguments(self, parser):
        parser.add_argument("--logins", action="store_true", help="Only print the demo logins; change nothing.")

    def handle(self, *args, logins: bool = False, **options):
        if not getattr(settings, "DEMO_SEED_ALLOWED", True):
            raise CommandError("seed_demo is disabled in this environment (DEMO_SEED_ALLOWED is off).")
        if not logins:
            with transaction.atomic():
                created = sum(self._seed_hospital(slug, name) for slug, name in DEMO_HOSPITALS)
            self.stdout.write(f"Demo data ready ({created} object(s) created or repaired).")
        self._print_logins()

    def _seed_hospital(self, slug: str, name: str) -> int:
        changes = 0
        hospital = Hospital.objects.filter(slug=slug).first()
        if hospital is None:
            hospital = create_hospital(Hospital(slug=slug, name=name))
            changes += 1
        for role in DEMO_ROLES:
            changes += self._seed_user(hospital, role, _email(role, slug))
        return changes

    def _seed_user(self, hospital: Hospital, role: Role, email: str) -> int:
        user = User.objects.filter(email=email).first()
        if user is None:
            create_user(User(email=email), hospital=hospital, role=role, password=DEMO_PASSWORD)
            return 1
        changes = 0
        if not Membership.objects.filter(user=user, hospital=hospital).exists():
            create_membership(Membership(user=user, hospital=hospital, role=role))
            changes += 1
        if not user.is_active or not user.check_password(DEMO_PASSWORD):
            User.objects.filter(pk=user.pk).update(is_active=True, locked_until=None, failed_login_count=0)
            user.is_active = True
            set_password(user, DEMO_PASSWORD)
            changes += 1
        return changes

    def _print_logins(self) -> None:
        self.stdout.write(f"Demo logins (password for all: {DEMO_PASSWORD}):")
        for hospital, role, email in demo_logins():
            self.stdout.write(f"  {hospital:<26} {role:<15} {email}")
