"""Evaluating a model version on a NORMAL/PNEUMONIA folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlcore import data, plots
from mlcore.engine import InferenceEngine
from mlcore.metrics import classification_report
from mlcore.preprocessing import load_grayscale_file

EVAL_BATCH_SIZE = 64


def folder_logits(engine: InferenceEngine, samples: list[data.Sample]) -> np.ndarray:
    logits = []
    for start in range(0, len(samples), EVAL_BATCH_SIZE):
        chunk = samples[start : start + EVAL_BATCH_SIZE]
        logits.append(engine.logits([load_grayscale_file(s.path) for s in chunk]))
    return np.concatenate(logits) if logits else np.zeros(0)


def evaluate_folder(engine: InferenceEngine, folder: Path, out_dir: Path | None = None) -> dict:
    samples = data.scan_folder(folder)
    targets = np.array([s.target for s in samples])
    probabilities = engine.probabilities(folder_logits(engine, samples))
    report = classification_report(targets, probabilities, engine.spec.threshold)
    report["model_version"] = engine.spec.name
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        plots.roc_plot(targets, probabilities, report["roc_auc"], engine.spec.threshold, out_dir / "roc.png")
        plots.confusion_plot(report["confusion_matrix"], out_dir / "confusion_matrix.png")
        plots.calibration_plot(targets, probabilities, report["ece"], out_dir / "calibration.png")
    return report
