"""Withdrawing a study filed in error in Chromium: the doctor opens the study, gives the
reason, and the page then says it is withdrawn, by whom and why; the worklist no longer
lists it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.test_portal_journey import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_doctor_withdraws_a_study_filed_under_the_wrong_patient(
    chromium, live_server, screenshot, doctor, hospital_a, make_study
):
    study = make_study(hospital_a, label="pneumonia", probability=0.8)
    page = sign_in(chromium, live_server, doctor)
    page.goto(f"{live_server.url}/studies/{study.code}/")

    page.get_by_text("Withdraw this study").click()
    page.get_by_role("button", name="Withdraw study").click()  # no reason yet: the browser asks for one
    expect(page.locator("#withdraw-reason")).to_be_focused()
    page.get_by_label("Why is it withdrawn?").fill("Another patient's film")
    screenshot(page, "30-study-withdraw-form", as_scrolled=True)
    page.get_by_role("button", name="Withdraw study").click()

    notice = page.locator(".withdrawn-notice")
    expect(notice).to_contain_text("Withdrawn as filed in error on ")
    expect(notice).to_contain_text(f"by {doctor}. Reason given: Another patient's film")
    expect(page.get_by_role("button", name="Withdraw study")).to_have_count(0)
    screenshot(page, "31-study-withdrawn")
    page.goto(f"{live_server.url}/")
    expect(page.locator(f"a[href='/studies/{study.code}/']")).to_have_count(0)
