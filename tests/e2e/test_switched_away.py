"""Two tabs, two hospitals, in Chromium: a radiologist who reads for both switches
hospital in one tab while the other still shows a page of the first. That page's
requests are refused in words, and nothing of the other hospital fills it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from diagnostics.models import Study
from hospital.models import Hospital, Membership, Role
from tests.e2e.test_portal_journey import RADIOGRAPH, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def open_for_the_active_hospital(chromium, live_server, user, hospital_a, hospital_b, path: str):
    """A page of the hospital the session starts in, then a second tab switching to the
    other one. Returns (page, its hospital, the other hospital, the second tab)."""
    page = sign_in(chromium, live_server, user)
    page.goto(f"{live_server.url}{path}")
    opened_for = page.get_by_label("Active hospital").evaluate("select => select.selectedOptions[0].text")
    page_hospital, other = (hospital_a, hospital_b) if opened_for == hospital_a.name else (hospital_b, hospital_a)
    other_tab = page.context.new_page()
    other_tab.goto(f"{live_server.url}/")
    switch(other_tab, other)
    return page, page_hospital, other, other_tab


def switch(tab, hospital: Hospital) -> None:
    tab.get_by_label("Active hospital").select_option(label=hospital.name)
    tab.get_by_role("button", name="Switch").click()
    expect(tab.get_by_text(f"Chest radiographs received by {hospital.name}")).to_be_visible()


def refusal(page_hospital: Hospital, other: Hospital) -> str:
    return f"You switched to {other.name} in another tab after opening this page for {page_hospital.name}"


def test_a_file_dropped_after_switching_is_refused_then_sent_by_try_again_after_switching_back(
    chromium, live_server, screenshot, shared_radiologist, hospital_a, hospital_b, broker
):
    page, page_hospital, other, other_tab = open_for_the_active_hospital(
        chromium, live_server, shared_radiologist, hospital_a, hospital_b, "/upload/"
    )

    page.locator("#upload-files").set_input_files(RADIOGRAPH)

    expect(page.locator(".upload-result--error")).to_contain_text(refusal(page_hospital, other))
    screenshot(page, "19-upload-after-switching-hospital")
    assert Study.objects.count() == 0

    switch(other_tab, page_hospital)
    page.get_by_role("button", name=f"Try again: {RADIOGRAPH.name}").click()

    expect(page.locator(".upload-result")).to_contain_text("Received")
    assert list(Study.objects.values_list("hospital", flat=True)) == [page_hospital.pk]
    broker.purge()  # the message for a worker this test does not run


def test_a_worklist_filtered_after_switching_keeps_its_rows_and_says_why(
    chromium, live_server, screenshot, shared_radiologist, hospital_a, hospital_b, make_study
):
    make_study(hospital_a, patient_id="MRN-A-1", accession_number="ACC-A-1")
    make_study(hospital_b, patient_id="MRN-B-1", accession_number="ACC-B-1")
    page, page_hospital, other, _ = open_for_the_active_hospital(
        chromium, live_server, shared_radiologist, hospital_a, hospital_b, "/"
    )
    own, others = ("MRN-A-1", "MRN-B-1") if page_hospital == hospital_a else ("MRN-B-1", "MRN-A-1")
    expect(page.locator("#worklist-results")).to_contain_text(own)

    page.get_by_label("Status").select_option(label="Completed")  # filters on change

    expect(page.locator("#toasts")).to_contain_text(refusal(page_hospital, other))
    expect(page.locator("#worklist-results")).to_contain_text(own)
    expect(page.locator("#worklist-results")).not_to_contain_text(others)
    screenshot(page, "20-worklist-after-switching-hospital")


def test_consent_saved_after_switching_is_refused_and_one_click_goes_back_to_the_page(
    chromium, live_server, screenshot, hospital_admin, hospital_a, hospital_b
):
    Membership.objects.create(user=hospital_admin, hospital=hospital_b, role=Role.HOSPITAL_ADMIN)
    page, page_hospital, other, _ = open_for_the_active_hospital(
        chromium, live_server, hospital_admin, hospital_a, hospital_b, "/hospital/consent/"
    )
    page.get_by_label("Share this hospital's reviewed studies to train Pleura's models").check()
    page.get_by_role("button", name="Save").click()

    expect(page.get_by_role("heading", name="You switched hospital in another tab")).to_be_visible()
    expect(page.locator(".error-page")).to_contain_text(refusal(page_hospital, other))
    screenshot(page, "21-consent-after-switching-hospital")
    assert not Hospital.objects.filter(shares_reviews_for_training=True).exists()

    page.get_by_role("button", name=f"Switch back to {page_hospital.name}").click()

    expect(page).to_have_url(f"{live_server.url}/hospital/consent/")
    expect(page.get_by_text(f"Whether {page_hospital.name}'s reviewed studies")).to_be_visible()


def test_a_study_reloaded_after_switching_offers_one_click_back_to_it(
    chromium, live_server, screenshot, shared_radiologist, hospital_a, hospital_b, make_study
):
    """It was a plain 404, the study's address lost (UX review)."""
    studies = {hospital: make_study(hospital, label="normal", probability=0.1) for hospital in (hospital_a, hospital_b)}
    page, page_hospital, _, _ = open_for_the_active_hospital(
        chromium, live_server, shared_radiologist, hospital_a, hospital_b, "/"
    )
    path = f"/studies/{studies[page_hospital].code}/"
    page.goto(f"{live_server.url}{path}")

    expect(page.get_by_text(f"This belongs to {page_hospital.name}, one of your hospitals")).to_be_visible()
    screenshot(page, "23-study-of-another-of-ones-hospitals")
    page.get_by_role("button", name=f"Switch to {page_hospital.name} and open it").click()

    expect(page).to_have_url(f"{live_server.url}{path}")
    expect(page.get_by_label("Active hospital")).to_have_value(str(page_hospital.code))
