from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from hospital.management.commands._helpers import hospital_by_slug
from hospital.models import IntegrationKey
from hospital.services import issue_integration_key


class Command(BaseCommand):
    help = "Create an integration key for an EMR system. The key is printed once, alone, on the last line."

    def add_arguments(self, parser):
        parser.add_argument("--hospital", required=True, help="The hospital's slug.")
        parser.add_argument("--name", required=True, help="What the key is for, e.g. 'EMR production'.")

    def handle(self, *args, hospital: str, name: str, **options):
        name = name.strip()
        if not name:
            raise CommandError("The key needs a name (what it is for).")
        if len(name) > IntegrationKey._meta.get_field("name").max_length:
            raise CommandError("The key's name is too long (100 characters at most).")
        target = hospital_by_slug(hospital)
        if IntegrationKey.objects.filter(hospital=target, name=name).exists():
            raise CommandError(f"{target.name} already has a key named {name!r}; pick another name.")
        key = IntegrationKey(hospital=target, name=name)
        raw_key = issue_integration_key(key)
        self.stdout.write(f"Created integration key {key.name!r} for {target.name} (prefix {key.prefix}).")
        self.stdout.write("Store it now: it is shown only once. Use it as 'Authorization: Bearer <key>'.")
        self.stdout.write(raw_key)
