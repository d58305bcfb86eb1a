"""Evaluating a model version on a NORMAL/PNEUMONIA folder."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from mlcore import data, plots
from mlcore.engine import InferenceEngine, NonFiniteOutput
from mlcore.metrics import classification_report
from mlcore.preprocessing import load_grayscale_file

EVAL_BATCH_SIZE = 64


def folder_logits(engine: InferenceEngine, samples: list[data.Sample], *, as_16_bit: bool = False) -> np.ndarray:
    read = (lambda path: sent_as_16_bit(load_grayscale_file(path))) if as_16_bit else load_grayscale_file
    logits = []
    for start in range(0, len(samples), EVAL_BATCH_SIZE):
        chunk = samples[start : start + EVAL_BATCH_SIZE]
        logits.append(engine.logits([read(s.path) for s in chunk]))
    logits = np.concatenate(logits) if logits else np.zeros(0)
    if not np.isfinite(logits).all():
        # Measured, NaN reached the metrics' library as a traceback (ML review); it is no figure.
        raise NonFiniteOutput(
            f"{engine.spec.name} gives no probability for {int(np.sum(~np.isfinite(logits)))} of {len(samples)} "
            "images (its weights hold values that are not numbers), so it cannot be measured"
        )
    return logits


def sent_as_16_bit(gray: np.ndarray) -> np.ndarray:
    """The same pixels as a 16-bit PNG carries them (x257: white stays white), read back
    as an upload is: stretched to its own range, which an 8-bit file is not."""
    buffer = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 257).save(buffer, format="PNG")
    return load_grayscale_file(buffer.getvalue())


def evaluate_folder(
    engine: InferenceEngine, folder: Path, out_dir: Path | None = None, *, as_16_bit: bool = False
) -> dict:
    """Metrics of `engine` on the folder; `as_16_bit`, of the same images sent as 16-bit
    PNGs, with how many labels that changed against the 8-bit files."""
    samples = data.scan_folder(folder)
    targets = np.array([s.target for s in samples])
    probabilities = engine.probabilities(folder_logits(engine, samples, as_16_bit=as_16_bit))
    report = classification_report(targets, probabilities, engine.spec.threshold)
    report["model_version"] = engine.spec.name
    if as_16_bit:
        as_8_bit = engine.probabilities(folder_logits(engine, samples))
        threshold = engine.spec.threshold
        report["sent_as"] = "16-bit PNG"
        report["labels_changed_from_8_bit"] = int(np.sum((as_8_bit >= threshold) != (probabilities >= threshold)))
        report["largest_probability_change"] = round(float(np.max(np.abs(as_8_bit - probabilities))), 4)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        plots.roc_plot(targets, probabilities, report["roc_auc"], engine.spec.threshold, out_dir / "roc.png")
        plots.confusion_plot(report["confusion_matrix"], out_dir / "confusion_matrix.png")
        plots.calibration_plot(targets, probabilities, report["ece"], out_dir / "calibration.png")
    return report
