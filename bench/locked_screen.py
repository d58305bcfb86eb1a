"""What recognising locked validation images among a retraining's reviews costs.

    python -m bench.locked_screen [--model pleura-resnet18-v1] [--reviews 200]

`mlcore.retraining.review_training_folder` decodes every locked validation image and
every exported review to compare their grey pixels (the export re-encodes a reviewed
study, so no file hash can match it). This times that screen on the shipped model's
locked set and `--reviews` exported PNGs made from training images, once, on this
machine: the price a retraining run pays before it trains.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pleura-resnet18-v1")
    parser.add_argument("--reviews", type=int, default=200)
    args = parser.parse_args()

    import os

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
    django.setup()
    from django.conf import settings

    from mlcore import data, retraining
    from mlcore.preprocessing import gray_to_png, load_grayscale_file

    data_dir = Path(settings.TRAINING_DATA_DIR)
    locked = retraining.locked_validation(Path(settings.SHIPPED_MODELS_DIR) / args.model / "split.json", data_dir)
    locked_names = {sample.relative_name for sample in locked}
    others = [s for s in data.scan_folder(data_dir) if s.relative_name not in locked_names][: args.reviews]
    with tempfile.TemporaryDirectory() as scratch:
        export = Path(scratch) / "export"
        for class_name in data.CLASSES:
            (export / class_name).mkdir(parents=True)
        # The export's form: grey PNGs; the first one is a locked image come back as a review.
        for index, sample in enumerate([locked[0], *others]):
            target = export / data.CLASSES[sample.target] / f"rv-{index:05d}.png"
            target.write_bytes(gray_to_png(load_grayscale_file(sample.path)))
        started = time.perf_counter()
        kept, left_out = retraining.review_training_folder(export, locked, Path(scratch) / "linked")
        seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "locked_images": len(locked),
                "reviews": len(others) + 1,
                "kept": len(kept),
                "left_out_as_locked": left_out,
                "seconds": round(seconds, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
