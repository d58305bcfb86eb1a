from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mlcore import registry
from mlcore.models import ModelVersion


class Command(BaseCommand):
    help = "Register the model shipped with Pleura and activate it when no version is active (idempotent)."

    def handle(self, *args, **options):
        model_dir = settings.MODEL_WEIGHTS_DIR / settings.DEFAULT_MODEL_NAME
        version = ModelVersion.objects.filter(name=settings.DEFAULT_MODEL_NAME).first()
        try:
            if version is None:
                version = registry.register_from_dir(model_dir)
                self.stdout.write(f"registered {version.name}")
            if ModelVersion.objects.active() is None:
                version = registry.activate(version)
                self.stdout.write(f"activated {version.name}")
        except registry.RegistryError as exc:
            raise CommandError(str(exc)) from exc
        active = ModelVersion.objects.active()
        self.stdout.write(f"active model: {active.name} (threshold {active.threshold:.4f})")
