from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from mlcore.card import write_card
from mlcore.network import ARCHITECTURES
from mlcore.training import TrainConfig, train


class Command(BaseCommand):
    help = "Train a pneumonia model on a NORMAL/PNEUMONIA folder (split by patient) and write its artefacts."

    def add_arguments(self, parser):
        parser.add_argument(
            "--data", type=Path, default=settings.TRAINING_DATA_DIR, help="folder with NORMAL/ and PNEUMONIA/"
        )
        parser.add_argument(
            "--extra-data", type=Path, action="append", default=[], help="more folders of the same layout"
        )
        parser.add_argument("--out", type=Path, required=True, help="output folder for weights, card and manifests")
        parser.add_argument("--name", default="pleura-resnet18")
        parser.add_argument("--arch", default="resnet18", choices=ARCHITECTURES)
        parser.add_argument("--epochs", type=int, default=12)
        parser.add_argument("--image-size", type=int, default=160)
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--lr", type=float, default=2e-3)
        parser.add_argument("--weight-decay", type=float, default=1e-4)
        parser.add_argument("--val-fraction", type=float, default=0.15)
        parser.add_argument("--patience", type=int, default=4, help="epochs without a better validation AUC")
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--min-sensitivity", type=float, default=0.95, help="operating point on validation")
        parser.add_argument("--workers", type=int, default=None)
        parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
        parser.add_argument("--init-weights", type=Path, default=None, help="start from these weights (fine-tuning)")
        parser.add_argument("--max-images", type=int, default=None, help="per class; for quick checks")
        parser.add_argument(
            "--range-stretch", type=float, default=0.0,
            help="share of training images stretched to their own range, as deeper images are served (0 to 1)",
        )  # fmt: skip
        parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
        parser.add_argument("--no-progress", action="store_true")

    def handle(self, *args, **options):
        config = self._config(options)
        if options["threads"]:
            torch.set_num_threads(options["threads"])
        # The run's log, on the output and beside the weights, its first line the options
        # that reproduce it (the thread count among them: the result depends on it).
        config.out_dir.mkdir(parents=True, exist_ok=True)
        log_file = config.out_dir / "training.log"
        log_file.write_text(f"# train_model {json.dumps(_options_of_the_run(options), sort_keys=True)}\n")
        handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(log_file)]
        logger = logging.getLogger("mlcore.training")
        for handler in handlers:
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        try:
            description = train(config)
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        finally:
            for handler in handlers:
                logger.removeHandler(handler)
                handler.close()
        write_card(description, config.out_dir)
        self.stdout.write(f"wrote {config.out_dir}/weights.pt (sha256 {description['weights_sha256']})")

    def _config(self, options) -> TrainConfig:
        for folder in [options["data"], *options["extra_data"]]:
            if not folder.is_dir():
                raise CommandError(f"{folder} is not a folder")
        if options["epochs"] < 1 or options["image_size"] < 32:
            raise CommandError("--epochs must be at least 1 and --image-size at least 32")
        if not 0 < options["min_sensitivity"] <= 1 or not 0 < options["val_fraction"] < 1:
            raise CommandError("--min-sensitivity must be in (0, 1] and --val-fraction in (0, 1)")
        if not 0 <= options["range_stretch"] <= 1:
            raise CommandError("--range-stretch must be in [0, 1]")
        return TrainConfig(
            data_dir=options["data"],
            out_dir=options["out"],
            name=options["name"],
            architecture=options["arch"],
            image_size=options["image_size"],
            epochs=options["epochs"],
            batch_size=options["batch_size"],
            learning_rate=options["lr"],
            weight_decay=options["weight_decay"],
            val_fraction=options["val_fraction"],
            patience=options["patience"],
            seed=options["seed"],
            min_sensitivity=options["min_sensitivity"],
            workers=options["workers"],
            device=options["device"],
            init_weights=options["init_weights"],
            extra_data_dirs=options["extra_data"],
            max_images=options["max_images"],
            range_stretch=options["range_stretch"],
            progress=not options["no_progress"],
        )


# Django's own options, which do not change what is trained.
_DJANGO_OPTIONS = {"verbosity", "settings", "pythonpath", "traceback", "no_color", "force_color", "skip_checks"}


def _options_of_the_run(options: dict) -> dict:
    ran_with = {name: value for name, value in options.items() if name not in _DJANGO_OPTIONS}
    ran_with["threads"] = torch.get_num_threads()  # as resolved, also when not given
    return json.loads(json.dumps(ran_with, default=str))
