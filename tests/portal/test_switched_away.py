"""A page opened for one hospital, used after switching to another in a second tab.

The active hospital is the session's, shared by every tab. Pages say which hospital they
were opened for (htmx's X-Pleura-Hospital header, forms' `opened_for` field), and the
gate refuses what they ask once the session names another: 409, in words that say what
happened, and nothing done. Before, their requests acted on the new hospital under a
page naming the old one.
"""

from __future__ import annotations

import pytest
from django.urls import reverse

from diagnostics.models import Review, Study
from hospital.models import AuditEvent, Hospital, Membership, Role
from tests.portal.conftest import NORMAL_JPEG
from tests.portal.test_upload import HX, UPLOAD, jpeg


def words(page: Hospital, active: Hospital) -> str:
    return (
        f"You switched to {active.name} in another tab after opening this page for {page.name}, so nothing was "
        f"done. Switch back to {page.name} to go on with this page, or reload it to work in {active.name}."
    )


def text(response) -> str:
    return response.content.decode().replace("&#x27;", "'")


@pytest.fixture
def switched(client_for, hospital_a, hospital_b):
    """`switched(user)`: a client whose session moved to hospital B in another tab after a
    page of hospital A was opened."""

    def switch(user):
        client = client_for(user)
        assert client.post(reverse("accounts:switch_hospital"), {"hospital": str(hospital_b.code)}).status_code == 302
        return client

    return switch


@pytest.fixture
def admin_of_both(hospital_admin, hospital_b):
    Membership.objects.create(user=hospital_admin, hospital=hospital_b, role=Role.HOSPITAL_ADMIN)
    return hospital_admin


def test_every_page_says_which_hospital_it_was_opened_for(client_for, shared_radiologist, hospital_a, make_study):
    study = make_study(hospital_a, label="pneumonia")
    client = client_for(shared_radiologist)
    client.post(reverse("accounts:switch_hospital"), {"hospital": str(hospital_a.code)})
    field = f'<input type="hidden" name="opened_for" value="{hospital_a.code}">'

    worklist = client.get(reverse("diagnostics:worklist")).content.decode()
    assert f'"X-Pleura-Hospital": "{hospital_a.code}"' in worklist
    assert field in worklist  # the filters' form, when it is posted without htmx
    assert field in client.get(UPLOAD).content.decode()
    assert field in client.get(reverse("diagnostics:study_detail", args=[study.code])).content.decode()  # the review


def test_htmx_requests_from_a_page_of_the_other_hospital_are_refused_in_words(
    switched, shared_radiologist, hospital_a, hospital_b, make_study
):
    study_a = make_study(hospital_a, status=Study.Status.QUEUED)
    make_study(hospital_b, patient_id="MRN-B-1")
    client = switched(shared_radiologist)
    page_of_a = {**HX, "HTTP_X_PLEURA_HOSPITAL": str(hospital_a.code)}

    answers = [
        client.post(reverse("diagnostics:worklist"), {"q": ""}, **page_of_a),  # a filter of A's worklist
        client.get(reverse("diagnostics:worklist_updates"), {"s": str(study_a.code)}, **page_of_a),  # its poll
        client.get(reverse("diagnostics:study_status", args=[study_a.code]), **page_of_a),  # a study page's poll
    ]

    assert [(a.status_code, a["Content-Type"], text(a)) for a in answers] == [
        (409, "text/plain; charset=utf-8", words(hospital_a, hospital_b))
    ] * 3
    assert all("MRN-B-1" not in text(a) for a in answers)
    # The same requests from a page of the active hospital, or saying nothing, go through.
    page_of_b = {**HX, "HTTP_X_PLEURA_HOSPITAL": str(hospital_b.code)}
    assert "MRN-B-1" in text(client.post(reverse("diagnostics:worklist"), {"q": ""}, **page_of_b))
    assert "MRN-B-1" in text(client.post(reverse("diagnostics:worklist"), {"q": ""}, **HX))


def test_a_review_typed_on_a_page_of_the_other_hospital_is_not_saved(
    switched, shared_radiologist, hospital_a, hospital_b, make_study
):
    study_a = make_study(hospital_a, label="pneumonia")
    client = switched(shared_radiologist)

    response = client.post(
        reverse("diagnostics:study_review", args=[study_a.code]),
        {"verdict": "agree", "opened_for": str(hospital_a.code)},
        **HX,
        HTTP_X_PLEURA_HOSPITAL=str(hospital_a.code),
    )

    assert (response.status_code, text(response)) == (409, words(hospital_a, hospital_b))
    assert Review.objects.count() == 0


def test_consent_saved_on_a_page_of_the_other_hospital_changes_neither(switched, admin_of_both, hospital_a, hospital_b):
    client = switched(admin_of_both)
    events_before = AuditEvent.objects.count()

    response = client.post(
        reverse("training_consent"),
        {"shares_reviews_for_training": "on", "opened_for": str(hospital_a.code)},
        HTTP_REFERER="http://testserver/hospital/consent/",
    )

    html = text(response)
    assert response.status_code == 409
    assert words(hospital_a, hospital_b) in html
    # One click back to the hospital and the page the form was on.
    assert f'<input type="hidden" name="hospital" value="{hospital_a.code}">' in html
    assert '<input type="hidden" name="next" value="/hospital/consent/">' in html
    assert f"Switch back to {hospital_a.name}</button>" in html
    assert list(Hospital.objects.order_by("name").values_list("name", "shares_reviews_for_training")) == [
        (hospital_b.name, False), (hospital_a.name, False),
    ]  # fmt: skip
    assert AuditEvent.objects.count() == events_before


def test_switching_back_from_the_refusal_returns_to_the_page_in_its_hospital(
    switched, admin_of_both, hospital_a, hospital_b
):
    client = switched(admin_of_both)
    back = client.post(
        reverse("accounts:switch_hospital"), {"hospital": str(hospital_a.code), "next": "/hospital/consent/"}
    )
    assert (back.status_code, back["Location"]) == (302, "/hospital/consent/")

    saved = client.post(
        reverse("training_consent"), {"shares_reviews_for_training": "on", "opened_for": str(hospital_a.code)}
    )

    assert saved.status_code == 302
    assert Hospital.objects.get(pk=hospital_a.pk).shares_reviews_for_training is True
    assert Hospital.objects.get(pk=hospital_b.pk).shares_reviews_for_training is False


def test_analyse_again_on_a_page_of_the_other_hospital_is_refused_not_404(
    switched, shared_radiologist, hospital_a, hospital_b, make_study
):
    study_a = make_study(hospital_a, status=Study.Status.FAILED, failure_code=Study.Failure.GAVE_UP, attempts=3)
    client = switched(shared_radiologist)

    response = client.post(
        reverse("diagnostics:study_analyse_again", args=[study_a.code]), {"opened_for": str(hospital_a.code)}
    )

    assert response.status_code == 409
    assert words(hospital_a, hospital_b) in text(response)
    assert Study.objects.values_list("status", flat=True).get(pk=study_a.pk) == "failed"


def test_files_sent_from_an_upload_page_of_the_other_hospital_are_refused_not_filed_under_it(
    switched, shared_radiologist, hospital_a, hospital_b
):
    client = switched(shared_radiologist)
    opened_for = {"opened_for": str(hospital_a.code)}

    script = client.post(UPLOAD, {"files": jpeg(), **opened_for}, **HX)
    form = client.post(UPLOAD, {"files": [jpeg(), jpeg(NORMAL_JPEG)], **opened_for})

    assert (script.status_code, script["Content-Type"], text(script)) == (
        409, "text/plain; charset=utf-8", words(hospital_a, hospital_b),
    )  # fmt: skip
    assert (form.status_code, words(hospital_a, hospital_b) in text(form)) == (409, True)
    assert Study.objects.count() == 0
    assert client.post(UPLOAD, {"files": jpeg(), "opened_for": str(hospital_b.code)}, **HX).status_code == 201
    assert Study.objects.get().hospital == hospital_b


def test_a_page_of_a_hospital_the_user_left_says_so_and_names_no_other(
    switched, shared_radiologist, hospital_a, hospital_b
):
    client = switched(shared_radiologist)
    Membership.objects.filter(user=shared_radiologist, hospital=hospital_a).delete()

    response = client.post(
        reverse("diagnostics:worklist"), {"q": ""}, **HX, HTTP_X_PLEURA_HOSPITAL=str(hospital_a.code)
    )

    assert (response.status_code, text(response)) == (
        409,
        "This page was opened for a hospital you no longer work in, so nothing was done. "
        f"Reload it to work in {hospital_b.name}.",
    )


def test_a_study_of_another_of_the_users_hospitals_offers_to_switch_to_it_and_open_it(
    switched, shared_radiologist, make_study, hospital_a, hospital_b
):
    """Reloaded after a switch to another hospital in another tab, a study's page was a
    plain 404 with the study's address lost (UX review)."""
    study = make_study(hospital_a, label="normal", probability=0.1)
    path = reverse("diagnostics:study_detail", args=[study.code])
    client = switched(shared_radiologist)

    refused = client.get(path)

    assert refused.status_code == 404
    assert f"This belongs to {hospital_a.name}, one of your hospitals" in text(refused)
    assert f'<input type="hidden" name="next" value="{path}">' in text(refused)
    switched_back = client.post(reverse("accounts:switch_hospital"), {"hospital": str(hospital_a.code), "next": path})
    assert (switched_back.status_code, switched_back["Location"]) == (302, path)
    assert client.get(path).status_code == 200


def test_a_study_of_a_hospital_the_user_does_not_work_in_offers_no_switch(client_for, outsider, make_study, hospital_a):
    study = make_study(hospital_a, label="normal", probability=0.1)
    refused = client_for(outsider).get(reverse("diagnostics:study_detail", args=[study.code]))
    assert refused.status_code == 404
    assert hospital_a.name not in text(refused) and "Switch to" not in text(refused)
