from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.core.validators import validate_email
from django.db import IntegrityError

from accounts.models import User
from accounts.services import create_user, normalize_email
from hospital.management.commands._helpers import hospital_by_slug, validation_message
from hospital.models import Role


class Command(BaseCommand):
    help = "Create a user with a role in one hospital. The password must pass the password validators."

    def add_arguments(self, parser):
        parser.add_argument("--hospital", required=True, help="The hospital's slug.")
        parser.add_argument("--role", required=True, help=f"One of: {', '.join(Role.values)}.")
        parser.add_argument("--email", required=True)
        parser.add_argument("--password", required=True)

    def handle(self, *args, hospital: str, role: str, email: str, password: str, **options):
        if role not in Role.values:
            raise CommandError(f"Unknown role {role!r}. Use one of: {', '.join(Role.values)}.")
        email = normalize_email(email)
        try:
            validate_email(email)
        except ValidationError as exc:
            raise CommandError(f"{email!r} is not a valid email address.") from exc
        target = hospital_by_slug(hospital)
        if User.objects.filter(email=email).exists():
            raise CommandError(f"A user with the email {email} already exists.")
        try:
            user = create_user(User(email=email), hospital=target, role=role, password=password)
        except ValidationError as exc:
            raise CommandError(f"The password was refused: {validation_message(exc)}") from exc
        except IntegrityError as exc:  # created concurrently since the check above
            raise CommandError(f"A user with the email {email} already exists.") from exc
        self.stdout.write(self.style.SUCCESS(f"Created {user.email} as {Role(role).label} at {target.name}."))
