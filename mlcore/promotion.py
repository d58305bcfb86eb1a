"""The promotion gate: a candidate reaches doctors only if it measures no worse on every
gated metric and better on at least one, by more than chance."""

from __future__ import annotations

import math

from mlcore.models import ModelVersion

# Specificity too: a candidate that calls every radiograph pneumonia keeps AUC and
# sensitivity and loses specificity; it measures worse.
GATED_METRICS = ("roc_auc", "sensitivity", "specificity")
# Below this many reviewed hold-out cases (of the class, for sensitivity and specificity),
# their figures are too noisy to veto a candidate (one case moves sensitivity by several
# points); they are still shown.
MIN_REVIEWED_HOLDOUT = 30


def gate_failures(candidate: ModelVersion, active: ModelVersion | None) -> list[str]:
    """Reasons to refuse the candidate (empty: it may be promoted).

    Both versions are compared on the metrics of one evaluation: the candidate's
    `metrics["comparison"]`, made when retraining evaluated it and the version then
    active on that version's locked validation set (and on the held-back reviewed cases,
    when there are enough of them). It must be a comparison with the version active now:
    one with an earlier version says nothing against the current one, and each version's
    own validation metrics come from different images, with a threshold fitted on them.
    """
    if active is None:
        return []
    comparison = candidate.metrics.get("comparison") or {}
    if not comparison:
        return [
            f"{candidate.name} was never compared with the active version {active.name} on its locked validation "
            "set: `compare_model NAME` measures it (retrain_model does for its own candidates)"
        ]
    compared_with = comparison.get("against") or {}
    # The version itself, not its weights alone: a copy of the active weights registered
    # with a split.json of hand-picked images and another threshold was compared with, and
    # the gate took its flattering figures as the active version's (ML review).
    if (compared_with.get("code"), compared_with.get("weights_sha256")) != (str(active.code), active.weights_sha256):
        return [
            f"{candidate.name} was compared with {compared_with.get('name') or 'another version'}, not with the "
            f"active version {active.name}; retrain from {active.name} to compare with it"
        ]
    compared = [(comparison, "", GATED_METRICS)]
    holdout = comparison.get("reviewed_holdout") or {}
    if judged := _judged_on_reviewed_cases(holdout):
        compared.append((holdout, "on reviewed cases: ", judged))
    failures = [
        failure
        for part, where, metrics in compared
        for failure in _compare(part.get("candidate") or {}, part.get("active") or {}, where, metrics)
    ]
    # Better models are promoted only when they measure better: one that ties on every
    # metric would replace the version doctors have for nothing (worker review), and so
    # would one ahead by chance: right on one image more, its threshold refitted on the
    # gate's own images, it was promoted (learning-loop review).
    if not failures and not any(
        _better_beyond_chance(part, metric) for part, _, metrics in compared for metric in metrics
    ):
        failures.append(
            f"{candidate.name} measures no better than the active version {active.name} on any metric beyond "
            "chance (sensitivity and specificity by McNemar's exact test, AUC by a bootstrap, at 5%)"
        )
    return failures


# A lead counts when chance would give one as large at most this often (one-sided).
SIGNIFICANCE = 0.05
_CLASS_OF = {"sensitivity": "pneumonia", "specificity": "normal"}


def _better_beyond_chance(part: dict, metric: str) -> bool:
    """Whether the candidate leads on `metric` by more than chance, by the comparison's
    paired evidence (mlcore.metrics.paired_evidence); none, no lead counts."""
    new, old, paired = part.get("candidate") or {}, part.get("active") or {}, part.get("paired") or {}
    if not (new.get(metric) is not None and old.get(metric) is not None and new[metric] > old[metric]):
        return False
    if metric == "roc_auc":
        lower = paired.get("roc_auc_gain_lower_95")
        return lower is not None and lower > 0
    return (paired.get(_CLASS_OF[metric]) or {}).get("p_value", 1.0) <= SIGNIFICANCE


def _judged_on_reviewed_cases(holdout: dict) -> tuple[str, ...]:
    """The gated metrics the reviewed hold-out has enough cases to judge: AUC on enough
    images of both classes; sensitivity on enough pneumonia cases and specificity on
    enough normal ones, each on its own. A hold-out of one class has no AUC, and its
    sensitivity was ignored with it however much worse the candidate was (ML review)."""
    matrix = (holdout.get("active") or {}).get("confusion_matrix") or {}
    pneumonia, normal = matrix.get("tp", 0) + matrix.get("fn", 0), matrix.get("tn", 0) + matrix.get("fp", 0)
    enough = {
        "roc_auc": holdout.get("images", 0) >= MIN_REVIEWED_HOLDOUT and pneumonia > 0 and normal > 0,
        "sensitivity": pneumonia >= MIN_REVIEWED_HOLDOUT,
        "specificity": normal >= MIN_REVIEWED_HOLDOUT,
    }
    return tuple(metric for metric in GATED_METRICS if enough[metric])


def _compare(new_metrics: dict, old_metrics: dict, where: str, metrics: tuple[str, ...]) -> list[str]:
    failures = []
    for metric in metrics:
        new, old = new_metrics.get(metric), old_metrics.get(metric)
        # NaN compares false both ways, so it was never worse (ML review): not a measure.
        if not all(isinstance(value, int | float) and math.isfinite(value) for value in (new, old)):
            failures.append(f"{where}{metric} is not measured for both versions")
        elif new < old:
            failures.append(f"{where}{metric} {new:.4f} is worse than the active version's {old:.4f}")
    return failures
