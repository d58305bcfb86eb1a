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
