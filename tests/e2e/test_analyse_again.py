"""A failed study's page in Chromium: the doctor reads why it failed and has it analysed
again with one click, without finding the file; the page then follows it as queued."""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from diagnostics import pipeline
from diagnostics.models import Study
from tests.e2e.test_portal_journey import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_doctor_has_a_failed_study_analysed_again(
    chromium, live_server, screenshot, doctor, hospital_a, make_study, broker
):
    reason = pipeline.GAVE_UP_MESSAGE.format(attempts=3)
    study = make_study(
        hospital_a,
        status=Study.Status.FAILED,
        failure_code=Study.Failure.GAVE_UP,
        failure_reason=reason,
        attempts=3,
        completed_at=timezone.now(),
    )
    page = sign_in(chromium, live_server, doctor)
    page.goto(f"{live_server.url}/studies/{study.code}/")
    expect(page.locator(".result-card")).to_contain_text(f"No result {reason}")
    screenshot(page, "15-study-failed")

    page.get_by_role("button", name="Analyse again").click()

    expect(page).to_have_url(f"{live_server.url}/studies/{study.code}/")
    expect(page.locator("#study-status .badge")).to_have_text("Queued")
    expect(page.get_by_role("button", name="Analyse again")).to_have_count(0)
    assert Study.objects.values_list("status", "attempts").get(pk=study.pk) == ("queued", 0)
    screenshot(page, "16-study-analysed-again")
    broker.purge()  # the message for a worker this test does not run
