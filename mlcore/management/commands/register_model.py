from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from mlcore import registry
from mlcore.data import COMPARISON_FILE
from mlcore.models import ModelVersion


class Command(BaseCommand):
    help = "Register the output folder of train_model as a candidate model version."

    def add_arguments(self, parser):
        parser.add_argument("model_dir", type=Path)
        parser.add_argument("--name", default=None, help="version name (default: the name in model.json)")
        parser.add_argument("--parent", default=None, help="name of the version this one was derived from")
        parser.add_argument(
            "--activate",
            action="store_true",
            help="also make it the active version, when there is none yet (else promote_model, which gates it)",
        )

    def handle(self, *args, **options):
        parent = None
        if options["parent"]:
            parent = ModelVersion.objects.filter(name=options["parent"]).first()
            if parent is None:
                raise CommandError(f"no model version named {options['parent']!r}")
        active = ModelVersion.objects.active()
        if options["activate"] and active is not None:
            # Activating here would skip the promotion gate: doctors would be served a model
            # never compared with the one they have.
            raise CommandError(
                f"{active.name} is active: register without --activate, then compare_model NAME and promote_model NAME"
            )
        try:
            version = registry.register_from_dir(options["model_dir"], name=options["name"], parent=parent)
            if options["activate"]:
                version = registry.activate(version)
        except registry.RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"registered {version.name} ({version.status}), sha256 {version.weights_sha256}")
        if active is not None:
            self.stdout.write(
                f"next: compare_model {version.name}, which measures it against {active.name} for the gate"
            )
        if (Path(options["model_dir"]) / COMPARISON_FILE).is_file():
            self.stdout.write(
                f"{COMPARISON_FILE} beside the weights was not read: the gate trusts only what Pleura measures"
            )
