from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from diagnostics.imaging import DecodedImage, RejectedUpload, decode_upload, describe_warnings
from mlcore import registry
from mlcore.engine import InferenceEngine, PredictionResult
from mlcore.gradcam import cam_to_size, overlay_png
from mlcore.models import ModelVersion

# Files decoded and predicted together: one batch keeps the network busy while a few
# decoded radiographs (up to ~3 MB each as uint8) are all that is held in memory.
PREDICT_BATCH_SIZE = 8


class Command(BaseCommand):
    help = (
        "Predict pneumonia on PNG, JPEG or DICOM files with the active model (or --model). "
        "Files are decoded exactly as uploads are; a bad file gets an error line and the others still run."
    )

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
        parser.add_argument("--json", action="store_true", help="one JSON object per line")
        parser.add_argument("--model", default=None, help="version name (default: the active one)")
        parser.add_argument("--heatmap-dir", type=Path, default=None, help="write a Grad-CAM overlay PNG per file")
        parser.add_argument("--device", default=None, help="cpu, cuda (default: CUDA when present)")

    def handle(self, *args, **options):
        engine = self._engine(options["model"], options["device"])
        self.as_json, self.heatmap_dir = options["json"], options["heatmap_dir"]
        if self.heatmap_dir is not None:
            self.heatmap_dir.mkdir(parents=True, exist_ok=True)
        self._written: set[str] = set()
        files = options["files"]
        failed = 0
        for start in range(0, len(files), PREDICT_BATCH_SIZE):
            failed += self._predict_chunk(engine, files[start : start + PREDICT_BATCH_SIZE])
        if failed:
            raise CommandError(f"{failed} of {len(files)} files could not be predicted", returncode=2)

    def _engine(self, name: str | None, device: str | None) -> InferenceEngine:
        try:
            if name is None:
                return registry.get_active_engine(device)[1]
            version = ModelVersion.objects.filter(name=name).first()
            if version is None:
                raise CommandError(f"no model version named {name!r}")
            return registry.get_engine(version, device)
        except registry.RegistryError as exc:
            raise CommandError(str(exc)) from exc

    def _predict_chunk(self, engine: InferenceEngine, paths: list[Path]) -> int:
        """Decode, predict and report a few files in input order; returns how many failed."""
        decoded: dict[int, DecodedImage] = {}
        errors: dict[int, str] = {}
        for index, path in enumerate(paths):
            try:
                decoded[index] = decode_upload(_read(path))
            except RejectedUpload as exc:
                errors[index] = exc.detail
        results = dict(zip(decoded, engine.predict([d.gray for d in decoded.values()]), strict=True))
        for index, path in enumerate(paths):
            if index in errors:
                self._report_error(path, errors[index])
            else:
                self._report(path, decoded[index], results[index])
        return len(errors)

    def _report(self, path: Path, image: DecodedImage, result: PredictionResult) -> None:
        line = {
            "file": str(path),
            "label": result.label,
            "probability": round(result.probability, 6),
            "threshold": round(result.threshold, 6),
            "model_version": result.model_version,
        }
        if image.warnings:
            line["warnings"] = image.warnings
        if self.heatmap_dir is not None:
            line["heatmap"] = str(self._write_heatmap(path, image, result))
        if self.as_json:
            self.stdout.write(json.dumps(line))
            return
        text = (
            f"{path}: {result.label} (probability {result.probability:.3f}, threshold {result.threshold:.3f}, "
            f"model {result.model_version})"
        )
        for warning in describe_warnings(image.warnings):
            text += f"\n  warning: {warning['message']}"
        self.stdout.write(text)

    def _report_error(self, path: Path, detail: str) -> None:
        if self.as_json:
            self.stdout.write(json.dumps({"file": str(path), "error": detail}))
        else:
            self.stderr.write(f"{path}: error: {detail}")

    def _write_heatmap(self, path: Path, image: DecodedImage, result: PredictionResult) -> Path:
        name = f"{path.stem}.heatmap.png"
        number = 1
        while name in self._written:  # two inputs with one stem (different folders)
            number += 1
            name = f"{path.stem}-{number}.heatmap.png"
        self._written.add(name)
        cam = cam_to_size(result.heatmap, *image.gray.shape)
        destination = self.heatmap_dir / name
        destination.write_bytes(overlay_png(image.gray, cam))
        return destination


def _read(path: Path) -> bytes:
    if not path.exists():
        raise RejectedUpload(400, "No such file.")
    if not path.is_file():
        raise RejectedUpload(400, "Not a file.")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise RejectedUpload(400, f"The file could not be read ({exc.strerror}).") from exc
