"""Evaluation figures as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve


def roc_plot(targets: np.ndarray, probabilities: np.ndarray, auc: float | None, threshold: float, path: Path) -> None:
    fpr, tpr, thresholds = roc_curve(targets, probabilities)
    figure, axis = plt.subplots(figsize=(5, 5), dpi=120)
    axis.plot(fpr, tpr, color="#1f5f8b", lw=2, label=f"ROC (AUC {auc:.4f})" if auc is not None else "ROC")
    axis.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--")
    at = np.argmin(np.abs(thresholds - threshold))
    axis.scatter([fpr[at]], [tpr[at]], color="#c0392b", zorder=3, label=f"threshold {threshold:.3f}")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC curve", xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def confusion_plot(confusion: dict, path: Path) -> None:
    matrix = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    figure, axis = plt.subplots(figsize=(4.5, 4), dpi=120)
    axis.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        axis.text(col, row, str(value), ha="center", va="center", color=colour, fontsize=14)
    axis.set_xticks([0, 1], ["normal", "pneumonia"])
    axis.set_yticks([0, 1], ["normal", "pneumonia"])
    axis.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def calibration_plot(targets: np.ndarray, probabilities: np.ndarray, ece: float, path: Path, bins: int = 10) -> None:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    centres, observed = [], []
    for b in range(bins):
        mask = which == b
        if mask.any():
            centres.append(probabilities[mask].mean())
            observed.append(targets[mask].mean())
    figure, axis = plt.subplots(figsize=(5, 5), dpi=120)
    axis.plot([0, 1], [0, 1], color="#999999", lw=1, ls="--", label="perfect calibration")
    axis.plot(centres, observed, marker="o", color="#1f5f8b", label=f"model (ECE {ece:.3f})")
    axis.set(
        xlabel="predicted probability of pneumonia",
        ylabel="observed frequency",
        title="Calibration",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
