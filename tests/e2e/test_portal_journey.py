"""The portal as people use it: a real headless Chromium, a live server, the real broker
and a real Celery worker running the model.

A doctor signs in, uploads a real radiograph, watches it turn `completed` on the
worklist without reloading, opens it and toggles the heatmap; a radiologist records a
disagreement without a reload; an outsider cannot open the study. Screenshots of each
page go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

from diagnostics.models import Review, Study
from hospital.models import Membership, Role
from tests.conftest import PASSWORD, SHARED_DATA
from tests.pipeline.conftest import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

RADIOGRAPH = SHARED_DATA / "chest_xray" / "train" / "PNEUMONIA" / "person1000_bacteria_2931.jpeg"
LAPTOP = {"width": 1366, "height": 900}
TABLET = {"width": 820, "height": 1180}
PHONE = {"width": 390, "height": 844}
# Worklist rows poll every 3 s; the worker loads the model once, then predicts in well under a second.
SETTLE_MS = 90_000


def fill_in_sign_in(page, user) -> None:
    """On the sign-in page: the user's email and password, then Sign in."""
    page.get_by_label("Email address").fill(user.email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def sign_in(browser, live_server, user, viewport=LAPTOP):
    page = browser.new_context(viewport=viewport).new_page()
    page.goto(f"{live_server.url}/accounts/login/")
    fill_in_sign_in(page, user)
    expect(page.get_by_role("heading", name="Worklist")).to_be_visible()
    return page


def mark_page(page) -> None:
    """Set a flag on the window: it survives HTMX swaps, never a page load."""
    page.evaluate("window.__pleuraNoReload = true")


def still_same_page(page) -> bool:
    return page.evaluate("window.__pleuraNoReload === true")


def test_doctor_uploads_watches_opens_radiologist_disagrees_outsider_is_refused(
    chromium, live_server, screenshot, e2e_model, broker, start_worker, doctor, radiologist, outsider, hospital_admin
):
    # --- The doctor signs in ---------------------------------------------------------
    login_page = chromium.new_context(viewport=LAPTOP).new_page()
    login_page.goto(f"{live_server.url}/accounts/login/")
    screenshot(login_page, "01-sign-in")
    page = sign_in(chromium, live_server, doctor)
    expect(page.locator(".hospital-chip")).to_have_text("St Mary's Hospital")

    # --- Uploads a real radiograph and a file that is not one ------------------------
    page.get_by_role("link", name="Upload", exact=True).click()
    page.get_by_label("Patient ID (optional)").fill("MRN-E2E-1")
    page.get_by_label("Accession number (optional)").fill("ACC-E2E-1")
    page.locator("#upload-files").set_input_files(
        [
            {"name": RADIOGRAPH.name, "mimeType": "image/jpeg", "buffer": RADIOGRAPH.read_bytes()},
            {"name": "discharge-letter.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.4 a letter"},
        ]
    )
    expect(page.locator(".upload-result--ok")).to_have_count(1)
    expect(page.locator(".upload-result--error")).to_contain_text("PDF")
    screenshot(page, "02-upload-results")
    study = Study.objects.get()
    assert (study.patient_id, study.accession_number, study.status) == ("MRN-E2E-1", "ACC-E2E-1", "queued")

    # --- Sees it queued on the worklist, then completed without reloading ------------
    page.get_by_role("link", name="Worklist", exact=True).click()
    row = page.locator(f"#study-{study.code}")
    expect(row.locator(".badge")).to_have_text("Queued")
    expect(page.locator("#worklist-poller")).to_have_attribute("hx-trigger", "every 3s")
    mark_page(page)
    screenshot(page, "03-worklist-queued")
    start_worker()
    expect(row.locator(".badge")).to_have_text("Completed", timeout=SETTLE_MS)
    assert still_same_page(page), "the row must update in place, not by reloading the page"
    expect(row.locator(".result")).to_have_text(re.compile(r"^(Pneumonia|Normal)$"))
    expect(page.locator("#worklist-poller")).not_to_have_attribute("hx-trigger", "every 3s")
    # Said in the live region too: the row changed out of band (portal review).
    announcer = page.locator("#worklist-announcer")
    expect(announcer).to_have_text(re.compile(r"^MRN-E2E-1: analysed, (pneumonia|normal)\. $"))
    expect(announcer).to_have_attribute("aria-live", "polite")
    screenshot(page, "04-worklist-completed")

    # --- Opens it and toggles the heatmap ---------------------------------------------
    row.get_by_role("link").click()
    expect(page).to_have_url(f"{live_server.url}/studies/{study.code}/")
    prediction = study.predictions.shown().get()
    words = "Pneumonia likely" if prediction.label == "pneumonia" else "No pneumonia detected"
    expect(page.locator(".verdict-line")).to_have_text(words)
    expect(page.locator(".probbar__threshold")).to_contain_text(f"threshold {prediction.threshold * 100:.1f}%")
    image = page.locator("img[data-image]")
    wait_for(lambda: image.evaluate("img => img.complete && img.naturalWidth > 0"), 10, what="radiograph loaded")
    heatmap = page.locator("img[data-heatmap]")
    expect(heatmap).to_be_hidden()
    screenshot(page, "05-study")
    page.get_by_label("Heatmap", exact=True).check()
    expect(heatmap).to_be_visible()
    # Fetched when switched on (loading="lazy"): then as wide as the radiograph.
    wait_for(lambda: heatmap.evaluate("img => img.complete && img.naturalWidth > 0"), 10, what="heatmap loaded")
    assert heatmap.evaluate("img => img.naturalWidth") == image.evaluate("img => img.naturalWidth")
    page.get_by_label("Heatmap opacity").fill("80")
    assert heatmap.evaluate("img => getComputedStyle(img).opacity") == "0.8"
    page.get_by_role("button", name="Zoom in").click()
    assert "scale(1.25)" in page.locator("[data-canvas]").evaluate("el => el.style.transform")
    screenshot(page, "06-study-heatmap")
    page.get_by_label("Heatmap", exact=True).uncheck()
    expect(heatmap).to_be_hidden()

    # --- A radiologist records a disagreement without a reload ------------------------
    reader = sign_in(chromium, live_server, radiologist)
    reader.goto(f"{live_server.url}/studies/{study.code}/")
    mark_page(reader)
    other_label = "Normal" if prediction.label == "pneumonia" else "Pneumonia"
    reader.get_by_label("Disagree", exact=True).check()
    # From the keyboard, without the correct finding: the focus lands on the field to mend,
    # not on the top of the page (the swap replaced the button it was on).
    reader.get_by_role("button", name="Save review").press("Enter")
    expect(reader.get_by_label("Correct finding")).to_be_focused()
    reader.get_by_label("Correct finding").select_option(label=other_label)
    reader.get_by_label("Note").fill("Thymic shadow, no consolidation.")
    reader.get_by_role("button", name="Save review").press("Enter")
    expect(reader.locator("#reviews .notice--success")).to_have_text("Review saved.")
    expect(reader.locator("#reviews .notice--success")).to_be_focused()  # read out, and Tab goes on from it
    assert still_same_page(reader)
    expect(reader.locator("#reviews .review")).to_contain_text("Disagrees")
    screenshot(reader, "07-radiologist-review")
    review = Review.objects.get()
    assert (review.radiologist, review.verdict, review.correct_label) == (
        radiologist,
        "disagree",
        other_label.lower(),
    )
    assert review.revisions.count() == 1

    # --- The doctor sees the review but no form ---------------------------------------
    page.reload()
    expect(page.locator("#reviews .review")).to_contain_text("Thymic shadow, no consolidation.")
    expect(page.get_by_role("button", name="Save review")).to_have_count(0)

    # --- An outsider cannot open the study, nor its image -----------------------------
    stranger = sign_in(chromium, live_server, outsider)
    expect(stranger.locator(f"#study-{study.code}")).to_have_count(0)
    response = stranger.goto(f"{live_server.url}/studies/{study.code}/")
    assert response.status == 404
    expect(stranger.get_by_role("heading", name="Not found")).to_be_visible()
    assert "MRN-E2E-1" not in stranger.content()
    screenshot(stranger, "08-outsider-404")
    assert stranger.goto(f"{live_server.url}/studies/{study.code}/image/").status == 404
    assert Review.objects.count() == 1

    # --- The hospital admin reads the audit trail; a tablet shows the same study ------
    admin = sign_in(chromium, live_server, hospital_admin)
    admin.get_by_role("link", name="Audit log").click()
    expect(admin.locator("#audit-results")).to_contain_text("review.saved")
    screenshot(admin, "09-audit-log")
    tablet_reader = get_user_model().objects.create_user(email="tablet@stmarys.example", password=PASSWORD)
    Membership.objects.create(user=tablet_reader, hospital=study.hospital, role=Role.RADIOLOGIST)
    tablet = sign_in(chromium, live_server, tablet_reader, viewport=TABLET)
    screenshot(tablet, "10-tablet-worklist")
    tablet.goto(f"{live_server.url}/studies/{study.code}/")
    screenshot(tablet, "11-tablet-study")
    # A phone hides the email, never the role (portal review: neither was shown).
    phone = sign_in(chromium, live_server, tablet_reader, viewport=PHONE)
    expect(phone.locator(".account__role")).to_be_visible()
    expect(phone.locator(".account__role")).to_have_text("Radiologist")
    expect(phone.locator(".account__email")).to_be_hidden()
    screenshot(phone, "29-phone-worklist")
