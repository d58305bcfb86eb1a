"""The promotion gate: a candidate reaches doctors only if it measures at least as well."""

from __future__ import annotations

from mlcore.models import ModelVersion

GATED_METRICS = ("roc_auc", "sensitivity")
# Below this many reviewed hold-out cases, their AUC and sensitivity are too noisy to
# veto a candidate (one case moves sensitivity by several points); they are still shown.
MIN_REVIEWED_HOLDOUT = 30


def gate_failures(candidate: ModelVersion, active: ModelVersion | None) -> list[str]:
    """Reasons to refuse the candidate (empty: it may be promoted).

    Both versions are compared on the metrics of the same evaluation: the candidate's
    `metrics["comparison"]` when the retraining evaluated both on one locked set (and
    on the held-back reviewed cases, when there are enough of them), else the
    validation metrics each was registered with.
    """
    if active is None:
        return []
    comparison = candidate.metrics.get("comparison") or {}
    failures = _compare(
        comparison.get("candidate") or candidate.metrics, comparison.get("active") or active.metrics, ""
    )
    holdout = comparison.get("reviewed_holdout") or {}
    if holdout.get("images", 0) >= MIN_REVIEWED_HOLDOUT and (holdout.get("active") or {}).get("roc_auc") is not None:
        failures += _compare(holdout.get("candidate") or {}, holdout["active"], "on reviewed cases: ")
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
