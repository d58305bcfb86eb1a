"""The promotion gate: a candidate reaches doctors only if it measures at least as well."""

from __future__ import annotations

from mlcore.models import ModelVersion

GATED_METRICS = ("roc_auc", "sensitivity")


def gate_failures(candidate: ModelVersion, active: ModelVersion | None) -> list[str]:
    """Reasons to refuse the candidate (empty: it may be promoted).

    Both versions are compared on the metrics of the same evaluation: the candidate's
    `metrics["comparison"]` when the retraining evaluated both on one locked set,
    else the validation metrics each was registered with.
    """
    if active is None:
        return []
    comparison = candidate.metrics.get("comparison") or {}
    candidate_metrics = comparison.get("candidate") or candidate.metrics
    active_metrics = comparison.get("active") or active.metrics
    failures = []
    for metric in GATED_METRICS:
        new, old = candidate_metrics.get(metric), active_metrics.get(metric)
        if new is None or old is None:
            failures.append(f"{metric} is not measured for both versions")
        elif new < old:
            failures.append(f"{metric} {new:.4f} is worse than the active version's {old:.4f}")
    return failures
