"""The promotion gate: a candidate reaches doctors only if it measures no worse on every
gated metric and better on at least one."""

from __future__ import annotations

from mlcore.models import ModelVersion

# Specificity too: a candidate that calls every radiograph pneumonia keeps AUC and
# sensitivity and loses specificity; it measures worse.
GATED_METRICS = ("roc_auc", "sensitivity", "specificity")
# Below this many reviewed hold-out cases, their AUC and sensitivity are too noisy to
# veto a candidate (one case moves sensitivity by several points); they are still shown.
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
            "set (retrain_model makes that comparison)"
        ]
    compared_with = comparison.get("against") or {}
    if compared_with.get("weights_sha256") != active.weights_sha256:
        return [
            f"{candidate.name} was compared with {compared_with.get('name') or 'another version'}, not with the "
            f"active version {active.name}; retrain from {active.name} to compare with it"
        ]
    compared = [(comparison.get("candidate") or {}, comparison.get("active") or {}, "")]
    holdout = comparison.get("reviewed_holdout") or {}
    if holdout.get("images", 0) >= MIN_REVIEWED_HOLDOUT and (holdout.get("active") or {}).get("roc_auc") is not None:
        compared.append((holdout.get("candidate") or {}, holdout["active"], "on reviewed cases: "))
    failures = [failure for new, old, where in compared for failure in _compare(new, old, where)]
    # Better models are promoted only when they measure better: one that ties on every
    # metric would replace the version doctors have for nothing (worker review).
    if not failures and not any(new[metric] > old[metric] for new, old, _ in compared for metric in GATED_METRICS):
        failures.append(f"{candidate.name} measures no better than the active version {active.name} on any metric")
    return failures


def _compare(new_metrics: dict, old_metrics: dict, where: str) -> list[str]:
    failures = []
    for metric in GATED_METRICS:
        new, old = new_metrics.get(metric), old_metrics.get(metric)
        if new is None or old is None:
            failures.append(f"{where}{metric} is not measured for both versions")
        elif new < old:
            failures.append(f"{where}{metric} {new:.4f} is worse than the active version's {old:.4f}")
    return failures
