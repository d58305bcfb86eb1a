"""The review form in Chromium: changing one's mind from a correction to an agreement."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from diagnostics.models import Review
from tests.e2e.test_portal_journey import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_agreeing_after_a_correction_clears_the_finding_kept_from_it(
    chromium, live_server, radiologist, hospital_a, make_study
):
    """The earlier correction stayed selected, contradicted "Agree", and the review was
    refused for it (diff review)."""
    study = make_study(hospital_a, label="pneumonia", probability=0.97)
    page = sign_in(chromium, live_server, radiologist)
    page.goto(f"{live_server.url}/studies/{study.code}/")
    page.get_by_role("radio", name="Disagree").check()
    page.locator("#id_correct_label").select_option("normal")
    page.get_by_role("button", name="Save review").click()
    expect(page.locator("#reviews")).to_contain_text("Review saved.")

    page.get_by_role("radio", name="Agree", exact=True).check()
    expect(page.locator("#id_correct_label")).to_have_value("")
    page.get_by_role("button", name="Update review").click()

    expect(page.locator("#reviews")).to_contain_text("Review updated.")
    assert list(Review.objects.values_list("verdict", "correct_label")) == [("agree", "pneumonia")]
