from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from mlcore import registry
from mlcore.engine import NonFiniteOutput
from mlcore.models import ModelVersion
from mlcore.retraining import RetrainingError, compare_registered


class Command(BaseCommand):
    help = (
        "Measure a registered candidate and a version (by default the active one) on that version's locked "
        "validation set, and store it as the candidate's comparison, which promote_model's gate reads."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="the registered candidate (register_model DIR registers a folder)")
        parser.add_argument("--against", default=None, help="version name (default: the active one)")
        parser.add_argument("--device", default=None)

    def handle(self, *args, **options):
        candidate = ModelVersion.objects.filter(name=options["name"]).first()
        if candidate is None:
            hint = (
                ": register the folder first (register_model DIR), then compare_model NAME"
                if Path(options["name"]).is_dir()
                else ""
            )
            raise CommandError(f"no model version named {options['name']!r}{hint}")
        against = (
            ModelVersion.objects.filter(name=options["against"]).first()
            if options["against"]
            else ModelVersion.objects.active()
        )
        if against is None:
            raise CommandError(
                f"no model version named {options['against']!r}" if options["against"] else "no active model version"
            )
        try:
            comparison = compare_registered(candidate, against, device=options["device"])
        except (RetrainingError, registry.RegistryError, FileNotFoundError, NonFiniteOutput) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(comparison, indent=2))
