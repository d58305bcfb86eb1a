"""The portal's in-page actions while the database is out. The server answers them 503
with its outage page (tests/ingestion/test_outages.py); here Chromium gets that very
response for a radiologist's review, and the page says what is out in the server's
words, once however often it is asked, keeps what was typed, and saves it once the
database is back."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from config.errors import DATABASE_RETRY_AFTER_SECONDS, DATABASE_UNAVAILABLE_PAGE, _unavailable_page
from diagnostics.models import Review
from tests.e2e.test_portal_journey import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

NOTE = "Thymic shadow, no consolidation."


def test_a_review_saved_during_a_database_outage_is_explained_once_kept_and_saved_later(
    chromium, live_server, screenshot, radiologist, hospital_a, make_study
):
    study = make_study(hospital_a, label="pneumonia", probability=0.91)
    outage = _unavailable_page(DATABASE_UNAVAILABLE_PAGE, DATABASE_RETRY_AFTER_SECONDS)
    reader = sign_in(chromium, live_server, radiologist)
    reader.goto(f"{live_server.url}/studies/{study.code}/")
    reader.route(
        "**/review/",
        lambda review: review.fulfill(status=503, headers=dict(outage.items()), body=outage.content),
    )

    reader.evaluate(
        "window.__outageAnswers = 0;"
        "document.addEventListener('htmx:responseError', () => { window.__outageAnswers += 1; })"
    )

    reader.get_by_label("Disagree", exact=True).check()
    reader.get_by_label("Correct finding").select_option(label="Normal")
    reader.get_by_label("Note").fill(NOTE)
    save = reader.get_by_role("button", name="Save review")
    save.scroll_into_view_if_needed()
    save.click()
    notices = reader.locator("#toasts .notice")
    expect(notices).to_have_text(f"Pleura is temporarily unavailable. {DATABASE_UNAVAILABLE_PAGE}")
    save.click()
    reader.wait_for_function("window.__outageAnswers === 2")  # the page has handled the second answer
    expect(notices).to_have_count(1)
    expect(reader.get_by_label("Note")).to_have_value(NOTE)
    expect(notices).to_be_in_viewport()  # where the radiologist is, not at the top of the page
    screenshot(reader, "17-review-database-down", as_scrolled=True)
    assert not Review.objects.exists()

    reader.unroute("**/review/")
    save.click()
    expect(reader.locator("#reviews .notice--success")).to_have_text("Review saved.")
    assert Review.objects.values_list("verdict", "correct_label", "note").get() == ("disagree", "normal", NOTE)
