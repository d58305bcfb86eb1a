from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mlcore import registry
from mlcore.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Register the model shipped with Pleura and activate it when no version is active (idempotent); "
        "first copy it into MODEL_WEIGHTS_DIR when that is a volume of its own."
    )

    def handle(self, *args, **options):
        model_dir = settings.MODEL_WEIGHTS_DIR / settings.DEFAULT_MODEL_NAME
        if not model_dir.exists():
            self._copy_shipped_model(model_dir)
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

    def _copy_shipped_model(self, model_dir: Path) -> None:
        shipped = Path(settings.SHIPPED_MODELS_DIR) / settings.DEFAULT_MODEL_NAME
        if not shipped.is_dir():
            return  # register_from_dir names what is missing
        try:
            model_dir.parent.mkdir(parents=True, exist_ok=True)
            # Copied beside its place and renamed into it: a copy cut short is never taken for the model.
            partial = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=model_dir.parent))
            shutil.copytree(shipped, partial, dirs_exist_ok=True)
            partial.rename(model_dir)
        except OSError as exc:
            raise CommandError(
                f"cannot copy the shipped model into {model_dir.parent} ({exc.strerror}): "
                "MODEL_WEIGHTS_DIR must be writable by this process"
            ) from exc
        self.stdout.write(f"copied {shipped.name} into {model_dir.parent}")
