from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from diagnostics import feedback
from hospital.models import Hospital


class Command(BaseCommand):
    help = (
        "Write the reviewed studies of consenting hospitals as a de-identified training set: "
        "NORMAL/ and PNEUMONIA/ PNGs, a holdout/ part for the promotion gate, and manifest.json."
    )

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, required=True, help="an empty folder (or an earlier export)")
        parser.add_argument("--hospital", action="append", default=[], help="only this hospital's slug (repeatable)")
        parser.add_argument(
            "--holdout-fraction", type=float, default=feedback.DEFAULT_HOLDOUT_FRACTION, help="held back for the gate"
        )

    def handle(self, *args, **options):
        hospitals = hospitals_from_slugs(options["hospital"])
        try:
            result = feedback.export_training_set(
                options["out"], hospitals=hospitals, holdout_fraction=options["holdout_fraction"]
            )
        except feedback.ExportError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"exported {result.train_examples} training and {result.holdout_examples} hold-out examples "
            f"of {len(result.per_hospital)} hospital(s) to {result.out_dir}; "
            f"{result.conflicts_left_out} left out for tied reviews, "
            f"{result.undecodable_left_out} whose stored file is gone or no longer decodes, "
            f"{result.outside_intended_use_left_out} outside the intended use; "
            f"data sha256 {result.data_sha256}"
        )
        if not result.per_hospital:
            # Nothing to say why, it read as a broken export (fresh-machine review).
            self.stdout.write(
                "no hospital's reviews were exported: none that consents to training use has reviewed studies "
                "(a hospital admin gives consent on the portal's Training consent page)"
            )


def hospitals_from_slugs(slugs: list[str]):
    """The named hospitals; a named one that does not consent is an error, never silently used."""
    if not slugs:
        return None
    hospitals = Hospital.objects.filter(slug__in=slugs)
    unknown = sorted(set(slugs) - set(hospitals.values_list("slug", flat=True)))
    if unknown:
        raise CommandError(f"no hospital with slug {', '.join(unknown)}")
    refusing = sorted(hospitals.filter(shares_reviews_for_training=False).values_list("slug", flat=True))
    if refusing:
        raise CommandError(f"{', '.join(refusing)} has not consented to share reviews for training")
    return hospitals
