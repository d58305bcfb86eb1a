"""classification_report against figures worked out by hand: the card and the gate read
them, and before this every test compared the function with its own output."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_calibration_on_scores_it_separates_perfectly_stays_within_its_bounds():
    """It collapsed to T 0.063, b 38.7: most images at a probability of exactly 1.0 (ML review)."""
    from mlcore.calibration import BIAS_RANGE, TEMPERATURE_RANGE, calibrated_probability, fit_temperature

    logits = np.array([-9.0, -7.5, -6.0, -5.0, 4.0, 5.5, 7.0, 8.0, 9.0, 10.0])
    targets = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])

    temperature, bias = fit_temperature(logits, targets)

    assert temperature == pytest.approx(TEMPERATURE_RANGE[0], abs=1e-3)
    assert BIAS_RANGE[0] <= bias <= BIAS_RANGE[1]
    assert calibrated_probability(logits, temperature, bias).max() < 1.0


def test_calibration_of_overlapping_scores_is_the_unbounded_fit():
    from mlcore.calibration import fit_temperature

    # Two normal classes, means -3 and 3, sd 4: the true log-odds are 3 x / 8, so T = 8 / 3.
    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1], 2000)
    logits = rng.normal(loc=np.where(targets == 1, 3.0, -3.0), scale=4.0)

    temperature, bias = fit_temperature(logits, targets)

    assert abs(temperature - 8 / 3) < 0.25 and abs(bias) < 0.15
