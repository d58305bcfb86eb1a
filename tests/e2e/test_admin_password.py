"""A hospital admin resets a doctor's password in Chromium: the page offers only to set it.
Django's "Disable password-based authentication" button stayed on it, and set the password
typed under a name that said the opposite (admin review): Pleura has no other sign-in."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.e2e.test_portal_journey import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_admin_sets_a_doctors_password_with_the_only_button_offered(
    chromium, live_server, screenshot, hospital_admin, doctor
):
    page = sign_in(chromium, live_server, hospital_admin)
    page.goto(f"{live_server.url}/admin/accounts/user/{doctor.pk}/password/")

    expect(page.get_by_role("button", name="Disable password-based authentication")).to_have_count(0)
    page.locator("#id_password1").fill("A-new-long-password-42")
    page.locator("#id_password2").fill("A-new-long-password-42")
    screenshot(page, "32-admin-password-reset")
    page.get_by_role("button", name="Change password").click()

    expect(page.locator(".messagelist")).to_contain_text("Password changed successfully.")
    doctor.refresh_from_db()
    assert doctor.check_password("A-new-long-password-42")
