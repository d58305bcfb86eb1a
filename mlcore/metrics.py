"""Classification metrics on calibrated probabilities (1 = pneumonia)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from mlcore.calibration import calibrated_probability, fit_temperature

ECE_BINS = 15


def threshold_for_sensitivity(targets: np.ndarray, probabilities: np.ndarray, min_sensitivity: float) -> float:
    """The threshold with the best specificity among those whose sensitivity is at least `min_sensitivity`.

    Candidates are the ROC curve's corner points (scikit-learn drops thresholds that
    only add sensitivity at the same specificity), so among equally specific
    thresholds the lowest, i.e. the most sensitive, one is taken: missing pneumonia
    costs more than a false alarm.

    A corner point is one validation image's own score. The threshold returned lies
    halfway between it and the next lower score instead: it labels every validation
    image as the corner does, but that image no longer sits on the boundary, where a
    score computed again in another memory layout, precision or device (logits move by
    3e-6 between NCHW and channels_last on a CPU) flips its label.
    """
    _, tpr, thresholds = roc_curve(targets, probabilities)
    acceptable = thresholds[(tpr >= min_sensitivity) & np.isfinite(thresholds)]
    if acceptable.size == 0:
        return float(probabilities.min())
    corner = float(acceptable.max())
    below = probabilities[probabilities < corner]
    if not below.size:
        return corner
    halfway = (corner + float(below.max())) / 2
    # Compared in the scores' own precision (float32 rounds `halfway` when the two scores
    # are adjacent floats): keep the corner unless halfway labels every image alike.
    same_labels = np.array_equal(probabilities >= halfway, probabilities >= corner)
    return halfway if same_labels else corner


def expected_calibration_error(targets: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(probabilities[in_bin].mean() - targets[in_bin].mean())
    return float(error)


def classification_report(targets: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    targets = np.asarray(targets).astype(int)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = (probabilities >= threshold).astype(int)
    tp = int(((predicted == 1) & (targets == 1)).sum())
    tn = int(((predicted == 0) & (targets == 0)).sum())
    fp = int(((predicted == 1) & (targets == 0)).sum())
    fn = int(((predicted == 0) & (targets == 1)).sum())
    both_classes = len(set(targets.tolist())) == 2
    sensitivity = tp / (tp + fn) if tp + fn else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    return {
        "images": len(targets),
        "threshold": round(float(threshold), 6),
        "accuracy": round((tp + tn) / len(targets), 4) if len(targets) else 0.0,
        "sensitivity": round(sensitivity, 4),
        "specificity": round(tn / (tn + fp), 4) if tn + fp else 0.0,
        "precision": round(precision, 4),
        "f1": round(2 * precision * sensitivity / (precision + sensitivity), 4) if precision + sensitivity else 0.0,
        "roc_auc": round(float(roc_auc_score(targets, probabilities)), 4) if both_classes else None,
        "pr_auc": round(float(average_precision_score(targets, probabilities)), 4) if both_classes else None,
        "ece": round(expected_calibration_error(targets, probabilities), 4),
        "confusion_matrix": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


@dataclass(frozen=True)
class OperatingPoint:
    temperature: float
    bias: float
    threshold: float
    metrics: dict  # classification_report on the images it was fitted on


def operating_point(logits: np.ndarray, targets: np.ndarray, min_sensitivity: float) -> OperatingPoint:
    """Calibrate, then choose the threshold with sensitivity >= `min_sensitivity`, on these
    validation logits; what training and a fine-tune's refit record beside the weights."""
    temperature, bias = fit_temperature(logits, targets)
    probabilities = calibrated_probability(logits, temperature, bias)
    threshold = threshold_for_sensitivity(targets, probabilities, min_sensitivity)
    return OperatingPoint(temperature, bias, threshold, classification_report(targets, probabilities, threshold))


# How sure "better" must be (the promotion gate): a one-sided 5% level.
BOOTSTRAP_RESAMPLES = 1000


def paired_evidence(
    targets: np.ndarray,
    candidate: np.ndarray,
    candidate_threshold: float,
    active: np.ndarray,
    active_threshold: float,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict:
    """Whether the candidate's lead over the active model on these images is more than
    chance, each at its own threshold: for sensitivity (pneumonia images) and specificity
    (normal ones), the images only one of them labels right and the exact one-sided
    McNemar p-value of the candidate's lead; for ROC AUC, the 2.5th percentile of the
    candidate's gain over class-stratified bootstrap resamples (None without both classes).

    A candidate right on one image more (a threshold refitted on the gate's own images put
    back the one the active model's rounding lost) was "better" (learning-loop review)."""
    targets = np.asarray(targets).astype(int)
    right_candidate = (np.asarray(candidate) >= candidate_threshold).astype(int) == targets
    right_active = (np.asarray(active) >= active_threshold).astype(int) == targets
    evidence: dict = {}
    for name, target in (("pneumonia", 1), ("normal", 0)):
        of_class = targets == target
        only_candidate = int(np.sum(of_class & right_candidate & ~right_active))
        only_active = int(np.sum(of_class & right_active & ~right_candidate))
        evidence[name] = {
            "only_candidate_right": only_candidate,
            "only_active_right": only_active,
            "p_value": round(_one_sided_sign_test(only_candidate, only_candidate + only_active), 6),
        }
    evidence["roc_auc_gain_lower_95"] = _auc_gain_lower_bound(targets, candidate, active, resamples, seed)
    return evidence


def _one_sided_sign_test(successes: int, trials: int) -> float:
    """P(X >= successes) for X ~ Binomial(trials, 1/2): McNemar's exact test, one-sided."""
    if trials == 0:
        return 1.0
    return float(sum(math.comb(trials, k) for k in range(successes, trials + 1)) / 2**trials)


def _auc_gain_lower_bound(targets, candidate, active, resamples: int, seed: int) -> float | None:
    positives, negatives = np.flatnonzero(targets == 1), np.flatnonzero(targets == 0)
    if not positives.size or not negatives.size:
        return None
    rng = np.random.default_rng(seed)
    candidate, active = np.asarray(candidate, dtype=np.float64), np.asarray(active, dtype=np.float64)
    gains = np.empty(resamples)
    for i in range(resamples):
        pos = rng.choice(positives, positives.size)
        neg = rng.choice(negatives, negatives.size)
        gains[i] = _auc(candidate[pos], candidate[neg]) - _auc(active[pos], active[neg])
    return round(float(np.percentile(gains, 2.5)), 6)


def _auc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """ROC AUC by ranks (Mann-Whitney), ties counted half."""
    _, group, counts = np.unique(
        np.concatenate([positive_scores, negative_scores]), return_inverse=True, return_counts=True
    )
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[group]  # 1-based, tied scores share their average rank
    n_pos, n_neg = positive_scores.size, negative_scores.size
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
