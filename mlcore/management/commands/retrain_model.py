from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from diagnostics import feedback
from diagnostics.management.commands.export_training_set import hospitals_from_slugs
from mlcore import retraining, tasks
from mlcore.engine import NonFiniteOutput
from mlcore.models import ModelVersion
from mlcore.promotion import gate_failures


class Command(BaseCommand):
    help = (
        "Fine-tune the active model on the base training data plus the consented radiologist reviews, "
        "and register the result as a candidate compared with the active model on the locked validation set."
    )

    def add_arguments(self, parser):
        parser.add_argument("--name", default=None, help="candidate name (default: <active>-ft<timestamp>)")
        parser.add_argument("--epochs", type=int, default=retraining.DEFAULT_EPOCHS)
        parser.add_argument("--lr", type=float, default=retraining.DEFAULT_LEARNING_RATE)
        parser.add_argument("--batch-size", type=int, default=32)
        parser.add_argument("--seed", type=int, default=42)
        parser.add_argument("--device", default=None, help="cpu, cuda (default: CUDA when present)")
        parser.add_argument("--hospital", action="append", default=[], help="only this consenting hospital")
        parser.add_argument("--holdout-fraction", type=float, default=feedback.DEFAULT_HOLDOUT_FRACTION)
        parser.add_argument("--export-dir", type=Path, default=None, help="keep the review export here")
        parser.add_argument("--max-images", type=int, default=None, help="per class; for quick checks")
        parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
        parser.add_argument("--actor", default=None, help="email of the person retraining (audit)")
        parser.add_argument("--queue", action="store_true", help="run it on the training queue's worker instead")

    def handle(self, *args, **options):
        if options["epochs"] < 1:
            raise CommandError("--epochs must be at least 1")
        actor = _actor(options["actor"])
        if options["queue"]:
            self._queue(options, actor)
            return
        if options["threads"]:
            torch.set_num_threads(options["threads"])
        try:
            with _training_log(self.stdout):
                version = feedback.retrain_from_reviews(
                    name=options["name"],
                    actor=actor,
                    hospitals=hospitals_from_slugs(options["hospital"]),
                    holdout_fraction=options["holdout_fraction"],
                    export_dir=options["export_dir"],
                    epochs=options["epochs"],
                    learning_rate=options["lr"],
                    batch_size=options["batch_size"],
                    seed=options["seed"],
                    device=options["device"],
                    max_images=options["max_images"],
                )
        except (
            retraining.RetrainingError,
            feedback.ExportError,
            FileNotFoundError,
            ValueError,
            NonFiniteOutput,
        ) as exc:
            raise CommandError(str(exc)) from exc
        comparison = version.metrics["comparison"]
        self.stdout.write(f"registered candidate {version.name} (parent {version.parent.name})")
        for who in ("candidate", "active"):
            m = comparison[who]
            self.stdout.write(f"  locked validation, {who}: AUC {m['roc_auc']}, sensitivity {m['sensitivity']}")
        # The gate's verdict, not an invitation: a candidate worse on every figure was
        # followed by "promote with" (fresh-machine review).
        refusals = gate_failures(version, ModelVersion.objects.active())
        if refusals:
            self.stdout.write("the promotion gate would refuse it:")
            for reason in refusals:
                self.stdout.write(f"  - {reason}")
        else:
            self.stdout.write(f"the promotion gate would accept it: manage.py promote_model {version.name}")

    def _queue(self, options, actor) -> None:
        if options["hospital"] or options["export_dir"] or options["max_images"]:
            raise CommandError("--queue runs the default export: drop --hospital, --export-dir and --max-images")

        active = ModelVersion.objects.active()
        if active is None:
            raise CommandError("no active model version to fine-tune from")
        name = options["name"] or retraining.default_candidate_name(active)
        kwargs = {"epochs": options["epochs"], "learning_rate": options["lr"], "seed": options["seed"]}
        transaction.on_commit(lambda: tasks.retrain_model.delay(name, actor.pk if actor else None, **kwargs))
        self.stdout.write(f"queued retraining of {name} on the training queue")


def _actor(email: str | None):
    if not email:
        return None
    user = get_user_model().objects.filter(email=email.lower(), is_active=True).first()
    if user is None:
        raise CommandError(f"no active user {email!r}")
    return user


class _training_log:
    """Show mlcore.training's per-epoch lines on the command's output while it runs."""

    def __init__(self, stream):
        self.handler = logging.StreamHandler(stream if hasattr(stream, "write") else sys.stdout)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        self.loggers = [logging.getLogger("mlcore.training"), logging.getLogger("mlcore.retraining")]

    def __enter__(self):
        for logger in self.loggers:
            logger.addHandler(self.handler)
            logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        for logger in self.loggers:
            logger.removeHandler(self.handler)
        return False
