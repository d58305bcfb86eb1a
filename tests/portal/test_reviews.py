from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from diagnostics.models import Review, ReviewRevision, Study
from hospital.audit import Action
from hospital.models import AuditEvent, Membership, Role

HX = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "reviews"}


@pytest.fixture
def study(make_study, hospital_a):
    return make_study(hospital_a, label="pneumonia", probability=0.8)


def review_url(study: Study) -> str:
    return reverse("diagnostics:study_review", args=[study.code])


def test_radiologist_records_a_disagreement_without_reload(client_for, radiologist, study):
    data = {"verdict": "disagree", "correct_label": "normal", "note": "Thymus, not consolidation."}
    response = client_for(radiologist).post(review_url(study), data, **HX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith('<section id="reviews"')
    assert "Review saved." in html and "Disagrees" in html and "Thymus, not consolidation." in html
    review = Review.objects.get()
    assert (review.study, review.radiologist, review.verdict, review.correct_label, review.note) == (
        study,
        radiologist,
        "disagree",
        "normal",
        "Thymus, not consolidation.",
    )
    assert review.prediction == study.predictions.get()
    assert list(review.revisions.values_list("verdict", "correct_label")) == [("disagree", "normal")]


def test_saving_again_updates_the_one_review_and_keeps_history(client_for, radiologist, study):
    client = client_for(radiologist)
    client.post(review_url(study), {"verdict": "disagree", "correct_label": "normal"}, **HX)
    second = client.post(review_url(study), {"verdict": "agree", "note": "On second look, agree."}, **HX)
    assert "Review updated." in second.content.decode()
    assert "edited 1 time" in second.content.decode()
    review = Review.objects.get()
    assert (review.verdict, review.correct_label, review.note) == ("agree", "pneumonia", "On second look, agree.")
    assert ReviewRevision.objects.filter(review=review).count() == 2
    assert sorted(ReviewRevision.objects.values_list("verdict", flat=True)) == ["agree", "disagree"]


def test_two_radiologists_each_have_their_own_review(client_for, radiologist, shared_radiologist, study, client):
    client_for(radiologist).post(review_url(study), {"verdict": "agree"}, **HX)
    client.logout()
    reader = client_for(shared_radiologist)
    reader.post(reverse("accounts:switch_hospital"), {"hospital": str(study.hospital.code)})
    reader.post(review_url(study), {"verdict": "disagree", "correct_label": "normal"}, **HX)
    assert Review.objects.filter(study=study).count() == 2


def test_review_is_audited_without_the_note(client_for, radiologist, study):
    client_for(radiologist).post(
        review_url(study), {"verdict": "disagree", "correct_label": "normal", "note": "Jane Doe, bed 4"}, **HX
    )
    event = AuditEvent.objects.get(action=Action.REVIEW_SAVED)
    review = Review.objects.get()
    assert event.actor_user == radiologist and event.target_id == str(study.code)
    assert event.detail == {
        "review": str(review.code),
        "verdict": "disagree",
        "correct_label": "normal",
        "created": True,
    }


def test_without_javascript_the_form_posts_and_redirects_back(client_for, radiologist, study):
    client = client_for(radiologist)
    response = client.post(review_url(study), {"verdict": "agree"})
    assert response.status_code == 302
    assert response["Location"] == reverse("diagnostics:study_detail", args=[study.code]) + "#reviews"
    page = client.get(response["Location"]).content.decode()
    assert "Your review has been saved." in page and "Update your review" in page


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"verdict": "disagree"}, "Choose the correct finding when you disagree."),
        (
            {"verdict": "disagree", "correct_label": "pneumonia"},
            "That is the model&#x27;s finding; choose &#x27;Agree&#x27; instead.",
        ),
        ({"verdict": "maybe"}, "Select a valid choice. maybe is not one of the available choices."),
        (
            {"verdict": "disagree", "correct_label": "normal", "note": "x" * 2001},
            "Ensure this value has at most 2000 characters (it has 2001).",
        ),
    ],
)
def test_invalid_reviews_are_a_clear_400_and_change_nothing(client_for, radiologist, study, data, message):
    response = client_for(radiologist).post(review_url(study), data, **HX)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Review.objects.count() == 0 and ReviewRevision.objects.count() == 0


def test_agreeing_needs_a_model_result(client_for, radiologist, make_study, hospital_a):
    pending = make_study(hospital_a, status=Study.Status.QUEUED)
    response = client_for(radiologist).post(review_url(pending), {"verdict": "agree"}, **HX)
    assert response.status_code == 400
    assert "There is no model result to agree with yet." in response.content.decode()
    assert Review.objects.count() == 0


@pytest.mark.parametrize("hx", [False, True])
def test_doctors_and_admins_get_403_and_nothing_is_saved(client_for, doctor, hospital_admin, study, hx, client):
    headers = HX if hx else {}
    for user in (doctor, hospital_admin):
        client.logout()
        response = client_for(user).post(review_url(study), {"verdict": "agree"}, **headers)
        assert response.status_code == 403
    assert Review.objects.count() == 0
    assert not AuditEvent.objects.filter(action=Action.REVIEW_SAVED).exists()


@pytest.mark.parametrize("hx", [False, True])
def test_outsiders_get_404_whatever_their_role(client_for, outsider, hospital_b, study, hx, client):
    outsider_radiologist = get_user_model().objects.create_user(email="rad@riverside.example", password="x" * 16)
    Membership.objects.create(user=outsider_radiologist, hospital=hospital_b, role=Role.RADIOLOGIST)
    headers = HX if hx else {}
    for user in (outsider, outsider_radiologist):
        client.logout()
        response = client_for(user).post(
            review_url(study), {"verdict": "disagree", "correct_label": "normal"}, **headers
        )
        assert response.status_code == 404
    assert Review.objects.count() == 0


def test_review_endpoint_only_accepts_post(client_for, radiologist, study):
    assert client_for(radiologist).get(review_url(study)).status_code == 405
