from __future__ import annotations

import uuid

import pytest

from mlcore.models import ModelVersion
from mlcore.promotion import MIN_REVIEWED_HOLDOUT, gate_failures


def _version(name: str, status: str, metrics: dict, weights_sha256: str = "0" * 64) -> ModelVersion:
    return ModelVersion.objects.create(
        # "active" is the version _comparison names as measured against.
        code=ACTIVE_CODE if name == "active" else uuid.uuid4(),
        name=name,
        architecture="resnet18",
        image_size=64,
        weights_path=f"{name}.pt",
        weights_sha256=weights_sha256,
        threshold=0.5,
        status=status,
        metrics=metrics,
    )


SAME = {"roc_auc": 0.99, "sensitivity": 0.96, "specificity": 0.9}
ACTIVE_WEIGHTS = "a" * 64
ACTIVE_CODE = uuid.UUID("00000000-0000-4000-8000-00000000000a")


def _reviewed(pneumonia: int, normal: int, **figures) -> dict:
    """Figures on a reviewed hold-out of so many cases of each class."""
    matrix = {"tp": pneumonia, "fn": 0, "tn": normal, "fp": 0}
    return {"roc_auc": 0.90, "sensitivity": 0.95, "specificity": 0.9, "confusion_matrix": matrix, **figures}


def _paired(auc_gain: float) -> dict:
    """Paired evidence (mlcore.metrics.paired_evidence) putting half of an AUC lead beyond
    chance, and no lead on either class's images."""
    no_lead = {"only_candidate_right": 0, "only_active_right": 0, "p_value": 1.0}
    return {"pneumonia": no_lead, "normal": no_lead, "roc_auc_gain_lower_95": auc_gain / 2}


def _comparison(holdout_images: int, holdout_candidate_auc: float, **candidate) -> dict:
    pneumonia = holdout_images // 2
    locked = {**SAME, **candidate}
    return {
        "comparison": {
            "candidate": locked,
            "active": SAME,
            "paired": _paired(locked["roc_auc"] - SAME["roc_auc"]),
            "reviewed_holdout": {
                "images": holdout_images,
                "candidate": _reviewed(pneumonia, holdout_images - pneumonia, roc_auc=holdout_candidate_auc),
                "active": _reviewed(pneumonia, holdout_images - pneumonia),
                "paired": _paired(holdout_candidate_auc - 0.90),
            },
            "against": {"name": "active", "code": str(ACTIVE_CODE), "weights_sha256": ACTIVE_WEIGHTS},
        }
    }


@pytest.mark.django_db
def test_gate_refuses_candidate_worse_on_enough_reviewed_cases():
    active = _version("active", ModelVersion.Status.ACTIVE, SAME, ACTIVE_WEIGHTS)
    candidate = _version("candidate", ModelVersion.Status.CANDIDATE, _comparison(MIN_REVIEWED_HOLDOUT, 0.85))

    assert gate_failures(candidate, active) == [
        "on reviewed cases: roc_auc 0.8500 is worse than the active version's 0.9000"
    ]


@pytest.mark.django_db
def test_gate_ignores_reviewed_holdout_too_small_to_judge():
    active = _version("active", ModelVersion.Status.ACTIVE, SAME, ACTIVE_WEIGHTS)
    candidate = _version(
        "candidate", ModelVersion.Status.CANDIDATE, _comparison(MIN_REVIEWED_HOLDOUT - 1, 0.85, roc_auc=0.995)
    )

    assert gate_failures(candidate, active) == []


@pytest.mark.django_db
@pytest.mark.parametrize(("holdout_auc", "refused"), [(0.90, True), (0.91, False)])
def test_a_candidate_that_measures_no_better_anywhere_is_refused(holdout_auc, refused):
    """Not worse was enough: a candidate tying on every metric replaced the version doctors
    had, for nothing (worker review). Better on the reviewed cases counts."""
    active = _version("active", ModelVersion.Status.ACTIVE, SAME, ACTIVE_WEIGHTS)
    candidate = _version("candidate", ModelVersion.Status.CANDIDATE, _comparison(MIN_REVIEWED_HOLDOUT, holdout_auc))

    assert gate_failures(candidate, active) == (
        [
            "candidate measures no better than the active version active on any metric beyond chance "
            "(sensitivity and specificity by McNemar's exact test, AUC by a bootstrap, at 5%)"
        ]
        if refused
        else []
    )


@pytest.mark.django_db
def test_a_candidate_that_trades_specificity_away_is_refused():
    """Calling every radiograph pneumonia keeps AUC and sensitivity."""
    active = _version("active", ModelVersion.Status.ACTIVE, SAME, ACTIVE_WEIGHTS)
    candidate = _version(
        "candidate", ModelVersion.Status.CANDIDATE, _comparison(0, 0.9, sensitivity=1.0, specificity=0.0)
    )

    assert gate_failures(candidate, active) == ["specificity 0.0000 is worse than the active version's 0.9000"]


@pytest.mark.django_db
def test_a_candidate_compared_with_an_earlier_active_version_is_refused():
    """Retrained twice, the better candidate promoted: the other was measured against the
    version active before, which says nothing against the one active now."""
    active = _version("active-now", ModelVersion.Status.ACTIVE, SAME, "b" * 64)
    candidate = _version("candidate", ModelVersion.Status.CANDIDATE, _comparison(0, 0.9))

    assert gate_failures(candidate, active) == [
        "candidate was compared with active, not with the active version active-now; retrain from active-now to "
        "compare with it"
    ]


@pytest.mark.django_db
def test_a_candidate_compared_with_a_copy_of_the_active_weights_is_refused():
    """The gate knew the version compared with by its weights alone: a copy of the active
    weights registered with a split.json of hand-picked locked images and another threshold
    was compared with, and its flattering figures passed for the active version's, with no
    override (ML review)."""
    active = _version("active", ModelVersion.Status.ACTIVE, SAME, ACTIVE_WEIGHTS)
    copy = _version("active-copy", ModelVersion.Status.CANDIDATE, SAME, ACTIVE_WEIGHTS)
    measured = _comparison(0, 0.9, roc_auc=0.995)
    measured["comparison"]["against"] = {"name": copy.name, "code": str(copy.code), "weights_sha256": ACTIVE_WEIGHTS}
    candidate = _version("candidate", ModelVersion.Status.CANDIDATE, measured)

    assert gate_failures(candidate, active) == [
        "candidate was compared with active-copy, not with the active version active; retrain from active to "
        "compare with it"
    ]


@pytest.mark.django_db
def test_a_version_never_compared_is_refused_whatever_its_own_validation_says():
    """Each version's own validation metrics come from different images, with a threshold
    fitted on them: they compare nothing."""
    active = _version("active", ModelVersion.Status.ACTIVE, {"roc_auc": 0.9, "sensitivity": 0.9}, ACTIVE_WEIGHTS)
    candidate = _version("candidate", ModelVersion.Status.CANDIDATE, {"roc_auc": 1.0, "sensitivity": 1.0})

    assert gate_failures(candidate, active) == [
        "candidate was never compared with the active version active on its locked validation set: "
        "`compare_model NAME` measures it (retrain_model does for its own candidates)"
    ]
    assert gate_failures(candidate, None) == []


@pytest.mark.django_db
def test_a_reviewed_hold_out_of_one_class_still_judges_that_classs_figure():
    """With no normal case there is no AUC, and the hold-out's sensitivity was ignored with
    it: 0.50 against 0.97 passed (ML review)."""
    active = _version("active", ModelVersion.Status.ACTIVE, SAME, ACTIVE_WEIGHTS)
    comparison = _comparison(0, 0.9, roc_auc=0.995)
    comparison["comparison"]["reviewed_holdout"] = {
        "images": 60,
        "candidate": _reviewed(60, 0, roc_auc=None, sensitivity=0.5, specificity=0.0),
        "active": _reviewed(60, 0, roc_auc=None, sensitivity=0.97, specificity=0.0),
    }
    candidate = _version("candidate", ModelVersion.Status.CANDIDATE, comparison)

    assert gate_failures(candidate, active) == [
        "on reviewed cases: sensitivity 0.5000 is worse than the active version's 0.9700"
    ]


def test_a_figure_that_is_not_a_number_is_not_measured_and_refuses_the_candidate():
    """NaN is never worse than anything, so it passed (ML review). The database refuses NaN
    in JSON, so the versions are not saved here."""
    active = ModelVersion(
        name="active", code=ACTIVE_CODE, status=ModelVersion.Status.ACTIVE, weights_sha256=ACTIVE_WEIGHTS
    )
    candidate = ModelVersion(name="candidate", metrics=_comparison(0, 0.9, roc_auc=float("nan"), sensitivity=0.97))

    assert gate_failures(candidate, active) == ["roc_auc is not measured for both versions"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("only_candidate_right", "only_active_right", "refused"), [(1, 0, True), (4, 1, True), (9, 0, False)]
)
def test_a_lead_in_sensitivity_counts_only_beyond_chance(only_candidate_right, only_active_right, refused):
    """Right on one pneumonia image more (its threshold refitted on the gate's own images put
    back the one the active model's rounding lost), a candidate was promoted as better
    (learning-loop review). McNemar's exact one-sided test: 1-0 and 4-1 are chance, 9-0 is not."""
    from mlcore.metrics import paired_evidence

    targets = [1] * 20 + [0] * 10
    active = [0.9] * 10 + [0.1] * (only_candidate_right) + [0.9] * (10 - only_candidate_right) + [0.1] * 10
    candidate = [0.9] * 20 + [0.1] * 10
    for i in range(only_active_right):  # pneumonia images only the active model finds
        candidate[i] = 0.1
    evidence = paired_evidence(targets, candidate, 0.5, active, 0.5)
    sensitivity = {
        "candidate": sum(p >= 0.5 for p in candidate[:20]) / 20,
        "active": sum(p >= 0.5 for p in active[:20]) / 20,
    }
    comparison = _comparison(0, 0.9)
    comparison["comparison"]["candidate"]["sensitivity"] = sensitivity["candidate"]
    comparison["comparison"]["active"] = {**SAME, "sensitivity": sensitivity["active"]}
    comparison["comparison"]["paired"] = evidence
    active_version = _version("active", ModelVersion.Status.ACTIVE, SAME, ACTIVE_WEIGHTS)
    candidate_version = _version("candidate", ModelVersion.Status.CANDIDATE, comparison)

    assert evidence["pneumonia"]["only_candidate_right"] == only_candidate_right
    assert (gate_failures(candidate_version, active_version) != []) is refused
