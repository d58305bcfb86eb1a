"""A patient search with more than a page of studies, in Chromium: Older goes to the
next page of the search (the term stays in the form's body, never in a URL)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.test_portal_journey import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_paging_through_a_patient_search_reaches_the_older_studies(
    chromium, live_server, doctor, hospital_a, make_study, settings
):
    for number in range(30):  # daily films of one patient, newest last
        make_study(hospital_a, patient_id="MRN-SAME", accession_number=f"ACC-{number:02d}")
    page = sign_in(chromium, live_server, doctor)

    page.get_by_label("Accession or patient ID").fill("MRN-SAME")
    # Searching, the pages are buttons of the form (links otherwise): the search has landed.
    expect(page.get_by_role("button", name="Older →")).to_be_visible()
    expect(page.locator(".pagination__info")).to_have_text("Page 1 of 2")
    first_page = page.locator("#worklist-results tbody tr").all_inner_texts()

    page.get_by_role("button", name="Older →").click()  # leaving the search box posts the form too

    expect(page.locator(".pagination__info")).to_have_text("Page 2 of 2")
    assert page.locator("#worklist-results tbody tr").all_inner_texts() != first_page
    expect(page.locator("#worklist-results")).to_contain_text("ACC-00")
    assert "MRN-SAME" not in page.url


def test_a_search_that_finds_nothing_says_so(chromium, live_server, doctor, hospital_a, make_study, screenshot):
    """It showed an empty card: no count, no words (portal review)."""
    make_study(hospital_a, patient_id="MRN-THERE", accession_number="ACC-THERE")
    page = sign_in(chromium, live_server, doctor)

    page.get_by_label("Accession or patient ID").fill("MRN-NOT-HERE")
    page.get_by_label("Accession or patient ID").press("Enter")

    expect(page.locator("#worklist-results")).to_contain_text("0 studies matching your search")
    expect(page.locator("#worklist-results")).to_contain_text("No studies match these filters.")
    screenshot(page, "21-worklist-search-without-match")
