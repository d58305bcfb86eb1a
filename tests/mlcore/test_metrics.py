"""classification_report against figures worked out by hand: the card and the gate read
them, and before this every test compared the function with its own output."""

from __future__ import annotations

import numpy as np

from mlcore.metrics import classification_report

# Four pneumonia, three normal; no score on one of the 15 calibration bins' edges.
TARGETS = np.array([1, 1, 1, 1, 0, 0, 0])
SCORES = np.array([0.9, 0.85, 0.7, 0.3, 0.62, 0.55, 0.1])


def test_every_figure_of_the_report_is_the_hand_worked_one():
    report = classification_report(TARGETS, SCORES, threshold=0.5)

    # At 0.5: pneumonia 0.9, 0.85, 0.7 caught and 0.3 missed; normal 0.62 and 0.55 flagged.
    assert report == {
        "images": 7,
        "threshold": 0.5,
        "accuracy": 0.5714,  # (3 + 1) / 7
        "sensitivity": 0.75,  # 3 / 4
        "specificity": 0.3333,  # 1 / 3
        "precision": 0.6,  # 3 / 5
        "f1": 0.6667,  # 2 * 0.6 * 0.75 / 1.35
        "roc_auc": 0.8333,  # 10 of the 12 pneumonia-normal pairs ordered right
        "pr_auc": 0.9167,  # 0.25 * (1 + 1 + 1 + 4/6): precision at each pneumonia in score order
        "ece": 0.36,  # one score a bin: the mean of |score - truth| = 2.52 / 7
        "confusion_matrix": {"tn": 1, "fp": 2, "fn": 1, "tp": 3},
    }


def test_one_class_only_has_no_ranking_figures():
    report = classification_report(np.array([1, 1]), np.array([0.8, 0.4]), threshold=0.5)
    assert (report["roc_auc"], report["pr_auc"], report["sensitivity"], report["specificity"]) == (None, None, 0.5, 0.0)
