"""Withdrawing a study filed in error from its page: doctors and radiologists, with a
reason; the study is kept, says so, and leaves the worklist, reviews and re-analysis."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from diagnostics.models import Review, Study
from hospital.models import AuditEvent
from tests.portal.test_reviews import post_review

FORM = 'action="/studies/{code}/withdraw/"'
NOTICE = "Withdrawn as filed in error"


@pytest.fixture
def study(make_study, hospital_a):
    return make_study(hospital_a, label="pneumonia", probability=0.8)


def page(client, study: Study) -> str:
    return client.get(reverse("diagnostics:study_detail", args=[study.code])).content.decode()


def withdraw(client, study: Study, reason: str = "Another patient's film"):
    return client.post(reverse("diagnostics:study_withdraw", args=[study.code]), {"reason": reason})


@pytest.mark.parametrize("who", ["doctor", "radiologist"])
def test_a_clinician_withdraws_a_study_and_its_page_says_so_and_by_whom(who, request, client_for, study):
    user = request.getfixturevalue(who)
    client = client_for(user)
    assert FORM.format(code=study.code) in page(client, study)

    response = withdraw(client, study)

    assert (response.status_code, response["Location"]) == (302, f"/studies/{study.code}/")
    study.refresh_from_db()
    assert (study.withdrawn_by, study.withdrawal_reason) == (user, "Another patient's film")
    html = page(client, study)
    assert f"{NOTICE}</strong> on {timezone.localtime(study.withdrawn_at):%d %b %Y %H:%M} by {user}." in html
    assert "Reason given: Another patient&#x27;s film<br>" in html
    assert '<span class="badge badge--failed">Withdrawn</span>' in html
    assert FORM.format(code=study.code) not in html
    assert AuditEvent.objects.get(action="study.withdrawn").actor_user == user


def test_a_withdrawn_study_leaves_the_worklist(client_for, doctor, study, make_study, hospital_a):
    kept = make_study(hospital_a, label="normal", probability=0.1)
    client = client_for(doctor)

    withdraw(client, study)

    html = client.get(reverse("diagnostics:worklist")).content.decode()
    assert str(kept.code) in html
    assert str(study.code) not in html


def test_a_withdrawn_study_offers_no_review_and_takes_none(client_for, radiologist, doctor, study):
    withdraw(client_for(doctor), study)
    client = client_for(radiologist)

    response = post_review(client, study, {"verdict": "agree"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="reviews")

    assert (response.status_code, response.content.decode()) == (
        409, "This study was withdrawn as filed in error, so it takes no reviews and nothing was saved.",
    )  # fmt: skip
    assert not Review.objects.exists()
    assert 'name="verdict"' not in page(client, study)


def test_a_withdrawn_failed_study_is_not_analysed_again(client_for, doctor, make_study, hospital_a):
    study = make_study(hospital_a, status=Study.Status.FAILED, failure_code=Study.Failure.GAVE_UP, attempts=3)
    client = client_for(doctor)
    withdraw(client, study)

    response = client.post(reverse("diagnostics:study_analyse_again", args=[study.code]))

    assert response.status_code == 302
    assert Study.objects.values_list("status", "attempts").get(pk=study.pk) == ("failed", 3)
    assert "Analyse again</button>" not in page(client, study)


def test_a_withdrawal_without_a_reason_is_400_with_the_form_open_and_nothing_changes(client_for, doctor, study):
    response = withdraw(client_for(doctor), study, reason="  ")

    html = response.content.decode()
    assert response.status_code == 400
    assert "<details open>" in html
    assert (
        '<p id="withdraw-error" class="field-error" role="alert">'
        "Say why the study is withdrawn (for example: another patient&#x27;s film).</p>"
    ) in html
    study.refresh_from_db()
    assert study.withdrawn_at is None


def test_a_refused_withdrawal_keeps_the_text_typed_in_focus_and_its_address_leads_back(client_for, doctor, study):
    """The text came back empty, the error sat far down the page, and reloading the address
    the form had posted to gave a blank 405 (UX review)."""
    client = client_for(doctor)
    url = reverse("diagnostics:study_withdraw", args=[study.code])

    twice = client.post(
        url, "reason=Another%20film&reason=A%20duplicate", content_type="application/x-www-form-urlencoded"
    )
    reloaded = client.get(url)

    html = twice.content.decode()
    assert twice.status_code == 400
    assert 'aria-describedby="withdraw-error" autofocus>Another film</textarea>' in html
    assert "The reason was sent twice: send it once." in html
    assert (reloaded.status_code, reloaded["Location"]) == (302, f"/studies/{study.code}/#withdraw")


def test_invisible_characters_pasted_with_the_reason_are_dropped_not_refused(client_for, doctor, study):
    withdraw(client_for(doctor), study, reason="Another patient\u00ad's film\u200b, scanned twice")
    study.refresh_from_db()
    assert study.withdrawal_reason == "Another patient's film, scanned twice"


def test_a_radiologist_is_told_why_a_withdrawn_study_takes_no_review(client_for, doctor, radiologist, study):
    withdraw(client_for(doctor), study)
    html = page(client_for(radiologist), study)
    assert "This study was withdrawn as filed in error, so it takes no reviews." in html
    assert "once the model&#x27;s result is shown" not in html


def test_a_hospital_admin_may_not_withdraw_and_an_outsider_learns_nothing(client_for, hospital_admin, outsider, study):
    assert withdraw(client_for(hospital_admin), study).status_code == 403
    assert withdraw(client_for(outsider), study).status_code == 404
    study.refresh_from_db()
    assert study.withdrawn_at is None


def test_a_row_withdrawn_while_the_worklist_polls_it_leaves_the_list_and_the_polling(
    client_for, doctor, make_study, hospital_a
):
    """The open worklist kept polling the row, swapped its result in when the worker was done,
    and announced it as the patient's, whose film it may not be (withdrawal review)."""
    queued = make_study(hospital_a, status=Study.Status.QUEUED, patient_id="MRN-POLL")
    client = client_for(doctor)
    withdraw(client, queued)
    Study.objects.filter(pk=queued.pk).update(status=Study.Status.COMPLETED)

    body = client.get(
        reverse("diagnostics:worklist_updates"), {"s": [str(queued.code)]}, HTTP_HX_REQUEST="true"
    ).content.decode()

    assert f'<template><tr id="study-{queued.code}" hx-swap-oob="delete"></tr></template>' in body
    assert 'hx-swap-oob="true"' not in body
    assert "1 study on this page withdrawn as filed in error. </div>" in body
    assert "MRN-POLL" not in body
    assert "hx-get" not in body  # nothing left to poll


def test_withdrawn_studies_are_found_in_the_worklist_when_asked_for(client_for, doctor, study, make_study, hospital_a):
    kept = make_study(hospital_a, label="normal", probability=0.1)
    client = client_for(doctor)
    withdraw(client, study)

    listed = client.get(reverse("diagnostics:worklist"), {"status": "withdrawn"}).content.decode()

    assert str(study.code) in listed and str(kept.code) not in listed
    assert '<span class="badge badge--failed">Withdrawn</span>' in listed


def test_a_withdrawn_study_still_waiting_is_listed_when_asked_for_and_not_polled(
    client_for, doctor, make_study, hospital_a
):
    """Polled, the update took the row off the very list that asks for withdrawn studies."""
    queued = make_study(hospital_a, status=Study.Status.QUEUED)
    client = client_for(doctor)
    withdraw(client, queued)

    listed = client.get(reverse("diagnostics:worklist"), {"status": "withdrawn"}).content.decode()

    assert str(queued.code) in listed
    assert f"s={queued.code}" not in listed
