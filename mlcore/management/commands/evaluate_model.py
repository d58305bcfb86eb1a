from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from mlcore import registry
from mlcore.engine import NonFiniteOutput
from mlcore.evaluation import evaluate_folder
from mlcore.models import ModelVersion


class Command(BaseCommand):
    help = "Evaluate a model version on a folder with NORMAL/ and PNEUMONIA/; prints JSON, writes plots with --out."

    def add_arguments(self, parser):
        parser.add_argument("folder", type=Path)
        parser.add_argument(
            "--out", type=Path, default=None, help="write roc.png, confusion_matrix.png, calibration.png"
        )
        parser.add_argument("--model", default=None, help="version name (default: the active one)")
        parser.add_argument("--device", default=None)
        parser.add_argument(
            "--as-16-bit", action="store_true",
            help="evaluate the same images sent as 16-bit PNGs, and count the labels that changed",
        )  # fmt: skip

    def handle(self, *args, **options):
        folder = options["folder"]
        if not (folder / "NORMAL").is_dir() or not (folder / "PNEUMONIA").is_dir():
            raise CommandError(f"{folder} must contain NORMAL/ and PNEUMONIA/ folders")
        try:
            if options["model"]:
                version = ModelVersion.objects.filter(name=options["model"]).first()
                if version is None:
                    raise CommandError(f"no model version named {options['model']!r}")
                engine = registry.get_engine(version, options["device"])
            else:
                _, engine = registry.get_active_engine(options["device"])
            report = evaluate_folder(engine, folder, options["out"], as_16_bit=options["as_16_bit"])
        except (registry.RegistryError, FileNotFoundError, NonFiniteOutput) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(report, indent=2))
