"""A page opened before its user signed in again (which rotates the CSRF token), in this
tab or another, is refused with words saying so, not with "your role does not allow this"
or Django's bare CSRF page."""

from __future__ import annotations

import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse

from config.errors import STALE_PAGE
from tests.conftest import PASSWORD

LOGIN = reverse("accounts:login")
WORKLIST = reverse("diagnostics:worklist")


def _sign_in(client: Client, user) -> None:
    client.get(LOGIN)
    token = client.cookies["csrftoken"].value
    response = client.post(LOGIN, {"username": user.email, "password": PASSWORD, "csrfmiddlewaretoken": token})
    assert response.status_code == 302


@pytest.fixture
def browser() -> Client:
    return Client(enforce_csrf_checks=True)


def test_a_worklist_search_from_a_page_opened_before_signing_in_again_says_the_page_is_out_of_date(browser, doctor):
    _sign_in(browser, doctor)
    token_of_the_open_page = browser.cookies["csrftoken"].value
    Session.objects.all().delete()  # the session ends (idle, or signed out by an admin)
    _sign_in(browser, doctor)  # in another tab: the token rotates

    response = browser.post(WORKLIST, {"q": "MRN"}, HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=token_of_the_open_page)

    assert (response.status_code, response["Content-Type"]) == (403, "text/plain; charset=utf-8")
    assert response.content.decode() == STALE_PAGE

    fresh = browser.post(
        WORKLIST, {"q": "MRN"}, HTTP_HX_REQUEST="true", HTTP_X_CSRFTOKEN=browser.cookies["csrftoken"].value
    )
    assert fresh.status_code == 200


def test_a_sign_in_form_opened_before_another_sign_in_gets_the_portals_page_in_words(browser, doctor, radiologist):
    browser.get(LOGIN)
    token_of_the_open_page = browser.cookies["csrftoken"].value
    _sign_in(browser, doctor)  # in another tab

    response = browser.post(
        LOGIN, {"username": radiologist.email, "password": PASSWORD, "csrfmiddlewaretoken": token_of_the_open_page}
    )

    html = response.content.decode()
    assert response.status_code == 403
    assert "<title>Page out of date · Pleura</title>" in html
    assert "reload it, then try again" in html
    assert "CSRF verification failed" not in html
