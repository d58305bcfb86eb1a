from __future__ import annotations

import pytest

from mlcore.models import ModelVersion
from mlcore.promotion import MIN_REVIEWED_HOLDOUT, gate_failures


def _version(name: str, status: str, metrics: dict) -> ModelVersion:
    return ModelVersion.objects.create(
        name=name,
        architecture="resnet18",
        image_size=64,
        weights_path=f"{name}.pt",
        weights_sha256="0" * 64,
        threshold=0.5,
        status=status,
        metrics=metrics,
    )


def _comparison(holdout_images: int, holdout_candidate_auc: float) -> dict:
    same = {"roc_auc": 0.99, "sensitivity": 0.96}
    return {
        "comparison": {
            "candidate": same,
            "active": same,
            "reviewed_holdout": {
                "images": holdout_images,
                "candidate": {"roc_auc": holdout_candidate_auc, "sensitivity": 0.95},
                "active": {"roc_auc": 0.90, "sensitivity": 0.95},
            },
        }
    }


@pytest.mark.django_db
def test_gate_refuses_candidate_worse_on_enough_reviewed_cases():
    active = _version("active", ModelVersion.Status.ACTIVE, {"roc_auc": 0.99, "sensitivity": 0.96})
    candidate = _version("candidate", ModelVersion.Status.CANDIDATE, _comparison(MIN_REVIEWED_HOLDOUT, 0.85))

    assert gate_failures(candidate, active) == [
        "on reviewed cases: roc_auc 0.8500 is worse than the active version's 0.9000"
    ]


@pytest.mark.django_db
def test_gate_ignores_reviewed_holdout_too_small_to_judge():
    active = _version("active", ModelVersion.Status.ACTIVE, {"roc_auc": 0.99, "sensitivity": 0.96})
    candidate = _version("candidate", ModelVersion.Status.CANDIDATE, _comparison(MIN_REVIEWED_HOLDOUT - 1, 0.85))

    assert gate_failures(candidate, active) == []


@pytest.mark.django_db
def test_gate_compares_recorded_validation_when_no_comparison_exists():
    active = _version("active", ModelVersion.Status.ACTIVE, {"roc_auc": 0.99, "sensitivity": 0.96})
    candidate = _version("candidate", ModelVersion.Status.CANDIDATE, {"roc_auc": 0.995, "sensitivity": 0.94})

    assert gate_failures(candidate, active) == ["sensitivity 0.9400 is worse than the active version's 0.9600"]
    assert gate_failures(candidate, None) == []
