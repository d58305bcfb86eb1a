from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from hospital.management.commands._helpers import validation_message
from hospital.models import Hospital
from hospital.services import create_hospital


class Command(BaseCommand):
    help = "Create a hospital (a tenant)."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help='Display name, e.g. "St Mary\'s Hospital".')
        parser.add_argument("--slug", required=True, help="Short unique identifier used by commands, e.g. st-marys.")
        parser.add_argument(
            "--time-zone", default=None, help="IANA time zone, e.g. Europe/London (default: TIME_ZONE)."
        )

    def handle(self, *args, name: str, slug: str, time_zone: str | None = None, **options):
        hospital = Hospital(name=name.strip(), slug=slug.strip())
        if time_zone:
            hospital.time_zone = time_zone.strip()
        try:
            hospital.full_clean()
        except ValidationError as exc:
            raise CommandError(f"Cannot create the hospital: {validation_message(exc)}") from exc
        create_hospital(hospital)
        self.stdout.write(self.style.SUCCESS(f"Created hospital {hospital.name} (slug {hospital.slug})."))
