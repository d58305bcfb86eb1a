from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from mlcore import registry
from mlcore.data import COMPARISON_FILE
from mlcore.models import ModelVersion
from mlcore.retraining import RetrainingError, compare_with_version


class Command(BaseCommand):
    help = (
        "Compare a trained model folder with a registered version on that version's locked validation set, and "
        f"write {COMPARISON_FILE} beside its weights: registered afterwards, it carries the comparison the "
        "promotion gate reads."
    )

    def add_arguments(self, parser):
        parser.add_argument("model_dir", type=Path, help="the output folder of train_model")
        parser.add_argument("--against", default=None, help="version name (default: the active one)")
        parser.add_argument("--device", default=None)

    def handle(self, *args, **options):
        model_dir = options["model_dir"]
        if not (model_dir / registry.MODEL_DESCRIPTION).is_file():
            raise CommandError(f"{model_dir / registry.MODEL_DESCRIPTION} not found: is it the output of train_model?")
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
            comparison = compare_with_version(model_dir, against, device=options["device"])
        except (RetrainingError, registry.RegistryError, FileNotFoundError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(comparison, indent=2))
