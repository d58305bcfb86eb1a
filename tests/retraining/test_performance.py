"""The model performance page: agreement with reviews per version, scoped by hospital."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from diagnostics.models import Prediction, Review, Study
from mlcore.models import ModelVersion

URL = "/models/performance/"


def _version(name: str, status=ModelVersion.Status.CANDIDATE, **extra) -> ModelVersion:
    return ModelVersion.objects.create(
        name=name,
        architecture="resnet18",
        image_size=64,
        weights_path=f"{name}/weights.pt",
        weights_sha256="0" * 64,
        threshold=0.5,
        status=status,
        **extra,
    )


def _study(hospital, n: int) -> Study:
    return Study.objects.create(
        hospital=hospital,
        patient_name=f"Secret Patient {n}",
        patient_id=f"MRN-SECRET-{n}",
        source=Study.Source.PORTAL,
        original_format=Study.Format.PNG,
        original_sha256=f"{n:064d}",
        original_size=1,
        status=Study.Status.COMPLETED,
    )


def _predict(study, version, label, is_shadow=False):
    Prediction.objects.create(
        study=study,
        model_version=version,
        probability=0.9 if label == "pneumonia" else 0.1,
        label=label,
        threshold=0.5,
        device="cpu",
        latency_ms=1.0,
        is_shadow=is_shadow,
    )


@pytest.fixture
def reviewed(hospital_a, hospital_b, radiologist, shared_radiologist):
    """Hospital A: 4 reviewed studies (+1 tied); hospital B: 1. Active v1, shadow candidate v2."""
    active = _version("v1", status=ModelVersion.Status.ACTIVE)
    shadow = _version("v2", shadow=True)
    # (model v1 label, shadow v2 label, radiologists' labels)
    cases_a = [
        ("pneumonia", "pneumonia", ["pneumonia"]),  # v1 tp, v2 tp
        ("pneumonia", "normal", ["normal"]),  # v1 fp, v2 tn
        ("normal", "pneumonia", ["pneumonia", "pneumonia"]),  # v1 fn, v2 tp
        ("normal", "normal", ["normal"]),  # v1 tn, v2 tn
        ("normal", "normal", ["normal", "pneumonia"]),  # tie: left out
    ]
    for n, (v1, v2, labels) in enumerate(cases_a):
        study = _study(hospital_a, n)
        _predict(study, active, v1)
        _predict(study, shadow, v2, is_shadow=True)
        for reader, label in zip([radiologist, shared_radiologist], labels, strict=False):
            Review.objects.create(study=study, radiologist=reader, verdict="agree", correct_label=label)
    study_b = _study(hospital_b, 99)
    _predict(study_b, active, "pneumonia")
    Review.objects.create(study=study_b, radiologist=shared_radiologist, verdict="disagree", correct_label="normal")
    return active, shadow


def _row(content: str, version: str) -> dict[str, int]:
    row = re.search(rf'<tr data-version="{version}">(.*?)</tr>\s*</table>', content, re.S).group(1)
    return {cell: int(value) for cell, value in re.findall(r'data-cell="(\w+)">(\d+)<', row)}


def test_radiologist_sees_own_hospital_confusion_for_active_and_shadow(client_for, radiologist, reviewed):
    response = client_for(radiologist).get(URL)
    assert response.status_code == 200
    content = response.content.decode()
    assert _row(content, "v1") == {"tp": 1, "fn": 1, "fp": 1, "tn": 1}
    assert _row(content, "v2") == {"tp": 2, "fn": 0, "fp": 0, "tn": 2}
    assert 'data-testid="reviews">7<' in content
    assert 'data-testid="labelled">4</strong> studies with a reference label' in content
    assert 'data-testid="conflicts">1<' in content
    assert 'data-shadow="v2"' in content
    assert "<svg" in content and "<polyline" in content
    assert "MRN-SECRET" not in content and "Secret Patient" not in content


def test_a_study_withdrawn_as_filed_in_error_leaves_the_figures(client_for, radiologist, doctor, reviewed):
    """Its radiologists' labels kept counting in the confusion matrix (diff review)."""
    from diagnostics.models import Study
    from diagnostics.withdrawal import withdraw_study

    false_positive = Study.objects.get(hospital__slug="st-marys", patient_id="MRN-SECRET-1")
    withdraw_study(false_positive, reason="A test image", user=doctor)

    content = client_for(radiologist).get(URL).content.decode()
    assert _row(content, "v1") == {"tp": 1, "fn": 1, "fp": 0, "tn": 1}
    assert 'data-testid="labelled">3</strong> studies with a reference label' in content


def test_agreement_figures_per_version(client_for, hospital_admin, reviewed):
    from diagnostics.performance import reviewed_set, version_stats

    active, shadow = reviewed
    stats = version_stats(reviewed_set([active_hospital := hospital_admin.memberships.get().hospital]))
    assert active_hospital.slug == "st-marys"
    assert (stats[active.pk].agreement, stats[active.pk].sensitivity, stats[active.pk].specificity) == (0.5, 0.5, 0.5)
    assert (stats[shadow.pk].agreement, stats[shadow.pk].sensitivity, stats[shadow.pk].specificity) == (1.0, 1.0, 1.0)
    assert client_for(hospital_admin).get(URL).status_code == 200


def test_other_hospital_admin_sees_only_their_own_reviews(client_for, outsider_admin, reviewed):
    content = client_for(outsider_admin).get(URL).content.decode()
    assert _row(content, "v1") == {"tp": 0, "fn": 0, "fp": 1, "tn": 0}
    assert 'data-version="v2"' not in content
    assert 'data-testid="labelled">1</strong> study with a reference label' in content


def test_superuser_sees_every_hospital(client_for, superuser, reviewed):
    content = client_for(superuser).get(URL).content.decode()
    assert _row(content, "v1") == {"tp": 1, "fn": 1, "fp": 2, "tn": 1}
    assert "All hospitals" in content


def test_doctor_gets_403_and_no_figures(client_for, doctor, outsider, reviewed):
    for user in (doctor, outsider):
        response = client_for(user).get(URL)
        assert response.status_code == 403
        assert b"data-version" not in response.content


def test_anonymous_is_sent_to_login(client, reviewed):
    response = client.get(URL)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_weekly_agreement_plot_has_one_point_per_week(radiologist, reviewed):
    from diagnostics.performance import agreement_chart, reviewed_set, version_stats

    active, _ = reviewed
    earlier = timezone.now() - timedelta(days=14)
    first = Review.objects.filter(study__hospital__slug="st-marys").order_by("id").first()
    Review.objects.filter(pk=first.pk).update(updated_at=earlier)
    stats = version_stats(reviewed_set([first.study.hospital]))
    chart = agreement_chart([stats[active.pk]])
    points = chart["series"][0]["points"]
    assert [(p["n"], p["rate"]) for p in points] == [(1, 1.0), (3, 1 / 3)]


def test_the_page_counts_reviews_by_the_export_rule(client_for, radiologist, shared_radiologist, reviewed, hospital_a):
    """It counted every review ever saved, where the export leaves out those of radiologists
    who left (learning-loop review): shared_radiologist's two in hospital A no longer count."""
    shared_radiologist.memberships.filter(hospital=hospital_a).update(is_active=False)
    content = client_for(radiologist).get(URL).content.decode()
    assert 'data-testid="reviews">5<' in content  # of 7
    assert 'data-testid="labelled">5</strong> studies' in content  # the tie had one of them
    assert 'data-testid="conflicts">0<' in content


def test_a_promoted_shadow_candidate_is_not_flagged_shadow(client_for, radiologist, reviewed):
    """Its earlier shadow predictions flagged it "shadow" for ever, beside "Active"."""
    active, shadow = reviewed
    while_candidate = client_for(radiologist).get(URL).content.decode()
    assert '<span class="flag">shadow</span>' in re.search(r'<tr data-version="v2">.*?</tr>', while_candidate, re.S)[0]
    ModelVersion.objects.filter(pk=active.pk).update(status=ModelVersion.Status.RETIRED)
    ModelVersion.objects.filter(pk=shadow.pk).update(status=ModelVersion.Status.ACTIVE, shadow=False)
    content = client_for(radiologist).get(URL).content.decode()
    row = re.search(r'<tr data-version="v2">.*?</tr>', content, re.S).group(0)
    assert "Active" in row and "shadow" not in row


def test_the_predictions_of_the_reviewed_studies_are_read_by_a_subquery(client_for, radiologist, reviewed):
    """As a list of their ids, each prediction query sent every reviewed study's id: 30,000
    literals and 265 ms each for a hospital two years in (scale review)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        assert client_for(radiologist).get(URL).status_code == 200

    predictions = [q["sql"] for q in queries.captured_queries if 'FROM "diagnostics_prediction"' in q["sql"]]
    assert len(predictions) == 2  # the versions' figures, and the shadow comparison
    assert all('"diagnostics_prediction"."study_id" IN (SELECT' in sql for sql in predictions)
