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


def post_review(client, study: Study, data: dict, **headers):
    """Post a review as the study's page does: with the result it was shown with."""
    shown = study.predictions.filter(is_shadow=False).order_by("-created_at", "-id").first()
    return client.post(review_url(study), {**data, "reviewed_prediction": shown.pk if shown else ""}, **headers)


def test_radiologist_records_a_disagreement_without_reload(client_for, radiologist, study):
    data = {"verdict": "disagree", "correct_label": "normal", "note": "Thymus, not consolidation."}
    response = post_review(client_for(radiologist), study, data, **HX)
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
    post_review(client, study, {"verdict": "disagree", "correct_label": "normal"}, **HX)
    second = post_review(client, study, {"verdict": "agree", "note": "On second look, agree."}, **HX)
    assert "Review updated." in second.content.decode()
    assert "edited 1 time" in second.content.decode()
    review = Review.objects.get()
    assert (review.verdict, review.correct_label, review.note) == ("agree", "pneumonia", "On second look, agree.")
    assert ReviewRevision.objects.filter(review=review).count() == 2
    assert sorted(ReviewRevision.objects.values_list("verdict", flat=True)) == ["agree", "disagree"]


def test_after_an_agreement_the_form_offers_no_correction_preselected(client_for, radiologist, study):
    """It pre-selected the model's own label as the correction: switching to Disagree and
    saving was refused as "the model's finding" (portal review)."""
    client = client_for(radiologist)
    post_review(client, study, {"verdict": "agree"}, **HX)
    form = client.get(reverse("diagnostics:study_detail", args=[study.code])).context["review_form"]
    assert (form["verdict"].value(), form["correct_label"].value()) == ("agree", None)
    post_review(client, study, {"verdict": "disagree", "correct_label": "normal"}, **HX)
    form = client.get(reverse("diagnostics:study_detail", args=[study.code])).context["review_form"]
    assert (form["verdict"].value(), form["correct_label"].value()) == ("disagree", "normal")


def test_two_radiologists_each_have_their_own_review(client_for, radiologist, shared_radiologist, study, client):
    post_review(client_for(radiologist), study, {"verdict": "agree"}, **HX)
    client.logout()
    reader = client_for(shared_radiologist)
    reader.post(reverse("accounts:switch_hospital"), {"hospital": str(study.hospital.code)})
    post_review(reader, study, {"verdict": "disagree", "correct_label": "normal"}, **HX)
    assert Review.objects.filter(study=study).count() == 2


def test_review_is_audited_without_the_note(client_for, radiologist, study):
    post_review(
        client_for(radiologist),
        study,
        {"verdict": "disagree", "correct_label": "normal", "note": "Jane Doe, bed 4"},
        **HX,
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
    response = post_review(client, study, {"verdict": "agree"})
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
        # Saved as the model's finding, the one chosen was dropped without a word (UX review).
        (
            {"verdict": "agree", "correct_label": "normal"},
            "That is not the model&#x27;s finding: choose &#x27;Disagree&#x27; to correct it, or set no correct "
            "finding to agree.",
        ),
        ({"verdict": "maybe"}, "Select a valid choice. maybe is not one of the available choices."),
        (
            {"verdict": "disagree", "correct_label": "normal", "note": "x" * 2001},
            "Ensure this value has at most 2000 characters (it has 2001).",
        ),
    ],
)
def test_invalid_reviews_are_a_clear_400_and_change_nothing(client_for, radiologist, study, data, message):
    response = post_review(client_for(radiologist), study, data, **HX)
    assert response.status_code == 400
    assert message in response.content.decode()
    assert Review.objects.count() == 0 and ReviewRevision.objects.count() == 0
    # The reviews part it answers with shows the study's reviews: a view, recorded (security review).
    viewed = AuditEvent.objects.filter(action="study.viewed", target_id=str(study.code), detail__part="reviews")
    assert viewed.count() == 1


@pytest.mark.parametrize("verdict", [{"verdict": "agree"}, {"verdict": "disagree", "correct_label": "pneumonia"}])
def test_a_study_without_a_result_offers_no_review_and_takes_none(
    verdict, client_for, radiologist, make_study, hospital_a
):
    """A 'Disagree: pneumonia' recorded before the model said pneumonia read as
    'Disputed' afterwards, though the two agree."""
    pending = make_study(hospital_a, status=Study.Status.QUEUED)
    client = client_for(radiologist)
    page = client.get(reverse("diagnostics:study_detail", args=[pending.code])).content.decode()
    assert "You can review this study once the model's result is shown." in page
    assert 'name="verdict"' not in page

    response = post_review(client, pending, verdict, **HX)

    assert (response.status_code, response.content.decode()) == (
        409, "There is no model result to review yet, so nothing was saved.",
    )  # fmt: skip
    assert Review.objects.count() == 0


def test_a_review_of_a_result_that_changed_meanwhile_is_refused(client_for, radiologist, study):
    """An 'Agree' posted after a new analysis would be saved for a label the radiologist
    never saw, and exported for training as confirmed."""
    from mlcore.models import ModelVersion
    from tests.portal.conftest import add_prediction

    client = client_for(radiologist)
    seen = study.predictions.get().pk
    other = ModelVersion.objects.create(
        name="pleura-resnet18-next", architecture="resnet18-gray", image_size=224, weights_path="next.pt",
        weights_sha256="1" * 64, threshold=0.42, status=ModelVersion.Status.CANDIDATE,
    )  # fmt: skip
    newer = add_prediction(study, other, label="normal", probability=0.1)  # a newer result, shown

    stale = client.post(review_url(study), {"verdict": "agree", "reviewed_prediction": seen}, **HX)
    page = client.post(review_url(study), {"verdict": "agree", "reviewed_prediction": seen}, follow=True)

    assert (stale.status_code, stale.content.decode()) == (
        409,
        "The model's result on this study changed after you opened it, so nothing was saved. "
        "Reload the page to review the result now shown.",
    )
    assert "The model&#x27;s result on this study changed after you opened it" in page.content.decode()
    assert Review.objects.count() == 0
    assert post_review(client, study, {"verdict": "agree"}, **HX).status_code == 200
    assert (Review.objects.get().prediction, Review.objects.get().correct_label) == (newer, "normal")


def test_the_same_review_sent_twice_is_one_revision_and_one_event(client_for, radiologist, study):
    client = client_for(radiologist)
    data = {"verdict": "agree", "note": "Clear consolidation."}

    post_review(client, study, data, **HX)
    second = post_review(client, study, data, **HX).content.decode()

    assert "edited" not in second
    assert ReviewRevision.objects.count() == 1
    assert AuditEvent.objects.filter(action=Action.REVIEW_SAVED).count() == 1


@pytest.mark.parametrize("hx", [False, True])
def test_doctors_and_admins_get_403_and_nothing_is_saved(client_for, doctor, hospital_admin, study, hx, client):
    headers = HX if hx else {}
    for user in (doctor, hospital_admin):
        client.logout()
        response = post_review(client_for(user), study, {"verdict": "agree"}, **headers)
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
        response = post_review(client_for(user), study, {"verdict": "disagree", "correct_label": "normal"}, **headers)
        assert response.status_code == 404
    assert Review.objects.count() == 0


def test_review_endpoint_only_accepts_post(client_for, radiologist, study):
    assert client_for(radiologist).get(review_url(study)).status_code == 405


def test_a_refused_review_shown_on_the_whole_study_page_is_recorded_as_a_view(client_for, radiologist, study):
    """Without htmx the 400 is the study page, the patient's details on it, and no event
    said who had seen them (audit review)."""
    response = post_review(client_for(radiologist), study, {"verdict": "maybe"})

    assert response.status_code == 400
    assert study.patient_id in response.content.decode()
    viewed = AuditEvent.objects.get(action=Action.STUDY_VIEWED)
    assert (viewed.actor_user, viewed.target_id) == (radiologist, str(study.code))


def test_a_review_form_served_to_another_user_saves_nothing(client_for, radiologist, hospital_a, study):
    """Kept through an ended session and saved after someone else signed in in another tab,
    the first radiologist's finding was saved and audited as the second's (diff review)."""
    colleague = get_user_model().objects.create_user(email="second-reader@stmarys.example", password="x" * 16)
    Membership.objects.create(user=colleague, hospital=hospital_a, role=Role.RADIOLOGIST)
    data = {"verdict": "disagree", "correct_label": "normal", "signed_in_as": str(radiologist.code)}

    response = post_review(client_for(colleague), study, data, **HX)

    assert (response.status_code, response.content.decode()) == (
        409, "This page was opened by another user, so nothing was saved. Reload it to review as yourself.",
    )  # fmt: skip
    assert Review.objects.count() == 0
    own = post_review(client_for(radiologist), study, data, **HX)
    assert (own.status_code, Review.objects.get().radiologist) == (200, radiologist)


def test_a_result_stored_between_the_check_and_the_save_refuses_the_review(client_for, radiologist, study, monkeypatch):
    """The view checked the result the form was shown with, then the save read the result
    again: one stored in between got the review given for the one before (code review)."""
    from diagnostics import views
    from mlcore.models import ModelVersion
    from tests.portal.conftest import add_prediction

    client = client_for(radiologist)
    seen = study.predictions.get().pk
    checked = views._result_not_the_one_seen

    def a_new_result_right_after_the_check(request, study_, prediction):
        refusal = checked(request, study_, prediction)
        other = ModelVersion.objects.create(
            name="pleura-resnet18-next", architecture="resnet18-gray", image_size=224, weights_path="next.pt",
            weights_sha256="1" * 64, threshold=0.42, status=ModelVersion.Status.CANDIDATE,
        )  # fmt: skip
        add_prediction(study_, other, label="normal", probability=0.1)
        monkeypatch.setattr(views, "_result_not_the_one_seen", checked)
        return refusal

    monkeypatch.setattr(views, "_result_not_the_one_seen", a_new_result_right_after_the_check)

    response = client.post(review_url(study), {"verdict": "agree", "reviewed_prediction": seen}, **HX)

    assert response.status_code == 409
    assert response.content.decode().startswith("The model's result on this study changed after you opened it")
    assert Review.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_the_same_review_submitted_twice_at_once_is_one_revision_and_one_event(radiologist, study, monkeypatch):
    """Both submits found no such review and both saved a revision and an event (code
    review): the study's row is locked first, so the second finds the first's review."""
    import contextlib
    import threading

    from diagnostics import reviews
    from tests.conftest import at_once, needs_postgresql

    needs_postgresql("two requests writing at once (SQLite runs one writing transaction at a time)")
    both_read = threading.Barrier(2, timeout=2)  # broken when the other waits on the lock
    read = reviews.current_prediction

    def read_then_wait_for_the_other(study_):
        prediction = read(study_)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait()
        return prediction

    monkeypatch.setattr(reviews, "current_prediction", read_then_wait_for_the_other)

    _, errors = at_once(
        lambda: reviews.save_review(study=study, radiologist=radiologist, verdict="agree", correct_label="pneumonia")
    )

    assert errors == []
    assert (Review.objects.count(), ReviewRevision.objects.count()) == (1, 1)
    assert AuditEvent.objects.filter(action=Action.REVIEW_SAVED).count() == 1
