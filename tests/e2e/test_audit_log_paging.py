"""A hospital admin pages through the audit log by keyboard: the new page's heading takes
the focus. The link pressed was replaced by the swap, the focus fell to the top of the page
and the view stayed at the bottom (UX review)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from hospital import audit
from tests.e2e.test_portal_journey import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_paging_the_audit_log_by_keyboard_keeps_the_focus_on_the_results(
    chromium, live_server, hospital_admin, doctor, hospital_a
):
    for _ in range(60):
        audit.record(audit.Action.STUDY_LISTED, actor=doctor, hospital=hospital_a, count=1)
    page = sign_in(chromium, live_server, hospital_admin)
    page.goto(f"{live_server.url}/hospital/audit/")

    page.get_by_role("link", name="Older →").focus()
    page.keyboard.press("Enter")

    expect(page.locator(".pagination__info")).to_have_text("Page 2 of 2")
    expect(page.get_by_role("heading", name="Events")).to_be_focused()


def test_a_patient_id_typed_as_a_study_code_is_never_sent_into_the_address(chromium, live_server, hospital_admin):
    """The filters travel in the URL, which browsers keep in their history."""
    page = sign_in(chromium, live_server, hospital_admin)
    page.goto(f"{live_server.url}/hospital/audit/")
    sent = []
    page.on("request", lambda request: sent.append(request.url) if "study=" in request.url else None)

    page.get_by_label("Study code").fill("MRN-0012345")
    page.get_by_role("button", name="Apply").click()

    expect(page.get_by_label("Study code")).to_have_js_property("validity.valid", False)
    page.wait_for_timeout(300)
    assert sent == []
    assert "MRN-0012345" not in page.url


def test_the_filters_apply_with_the_button_shown(chromium, live_server, hospital_admin, doctor, hospital_a):
    """With filters no longer applied on each change (each arrow key read and recorded the
    trail), the Apply button that scripts hid stayed hidden: no filter could be applied."""
    audit.record(audit.Action.STUDY_LISTED, actor=doctor, hospital=hospital_a, count=1)
    page = sign_in(chromium, live_server, hospital_admin)
    page.goto(f"{live_server.url}/hospital/audit/")

    page.get_by_label("Action").select_option("study.listed")
    page.get_by_role("button", name="Apply").click()

    expect(page).to_have_url(
        f"{live_server.url}/hospital/audit/?user=&key=&action=study.listed&study=&date_from=&date_to="
    )
    rows = page.locator("#audit-results tbody tr")
    expect(rows.filter(has_text="Studies listed")).to_have_count(2)  # the doctor's, and the admin's own landing
    expect(rows.filter(has_not_text="Studies listed")).to_have_count(0)
    # The swap is read out to a screen reader: how many events the filters found.
    expect(page.locator("#audit-announcer")).to_have_text("2 events.")
    expect(page.locator("#audit-announcer")).to_have_attribute("aria-live", "polite")
