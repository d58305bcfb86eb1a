"""A hospital admin creates an EMR key on a phone: the key shown once fits the screen and
a button copies it whole (it ran past the edge at 390 px, and was copied short by hand)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from hospital.models import IntegrationKey, hash_api_key
from tests.e2e.test_portal_journey import PHONE, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_a_new_key_fits_a_phone_and_is_copied_whole(chromium, live_server, screenshot, hospital_admin, hospital_a):
    page = sign_in(chromium, live_server, hospital_admin, viewport=PHONE)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page.goto(f"{live_server.url}/admin/hospital/integrationkey/add/")
    page.get_by_label("Name").fill("EMR production")
    page.get_by_role("button", name="Save", exact=True).click()

    key = page.locator("#raw-key")
    expect(key).to_be_visible()
    assert key.evaluate("element => element.scrollWidth <= element.clientWidth") is True
    page.get_by_role("button", name="Copy the key").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    screenshot(page, "26-admin-key-created-phone")

    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == key.inner_text().strip()
    assert IntegrationKey.objects.get(name="EMR production").key_hash == hash_api_key(copied)


def test_revoking_a_key_asks_first_then_cuts_it_off(chromium, live_server, screenshot, hospital_admin, key_a):
    page = sign_in(chromium, live_server, hospital_admin)
    page.goto(f"{live_server.url}/admin/hospital/integrationkey/")
    page.locator(f'input[name="_selected_action"][value="{key_a[0].pk}"]').check()
    page.locator('select[name="action"]').select_option("revoke_selected")
    page.locator('button[name="index"]').click()

    expect(page.locator("#content")).to_contain_text("EMR St Mary's (St Mary's Hospital")
    screenshot(page, "27-admin-revoke-confirmation")
    assert IntegrationKey.objects.get(pk=key_a[0].pk).revoked_at is None
    page.get_by_role("button", name="Yes, revoke 1 key").click()

    expect(page.locator(".messagelist")).to_contain_text("1 key(s) revoked.")
    assert IntegrationKey.objects.get(pk=key_a[0].pk).revoked_at is not None


def test_a_users_page_shows_their_hospitals_and_roles(chromium, live_server, screenshot, hospital_admin, doctor):
    page = sign_in(chromium, live_server, hospital_admin)
    page.goto(f"{live_server.url}/admin/accounts/user/{doctor.pk}/change/")

    inline = page.locator("#memberships-group")
    expect(inline).to_contain_text("Hospitals and roles")
    expect(inline.locator("td.field-role")).to_have_text("Doctor")
    screenshot(page, "28-admin-user-roles")
