"""The portal while the image storage is down. An upload shows the server's own words
for the 503, not a generic failure, and nothing is stored; its Try again button sends the
same file, with the identifiers typed for it, once the storage is back. A study's page
says its radiograph and heatmap cannot be shown just now, instead of broken pictures,
and shows them when asked again once the storage is back."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from diagnostics.models import Study
from tests.conftest import unreachable_media_root
from tests.e2e.test_portal_journey import RADIOGRAPH, sign_in, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_upload_while_the_storage_is_down_shows_why_and_is_sent_again_when_asked(
    chromium, live_server, screenshot, settings, tmp_path, doctor, broker
):
    mounted = settings.MEDIA_ROOT
    settings.MEDIA_ROOT = unreachable_media_root(tmp_path)
    page = sign_in(chromium, live_server, doctor)

    page.get_by_role("link", name="Upload", exact=True).click()
    page.get_by_label("Patient ID (optional)").fill("MRN-RETRY-1")
    page.locator("#upload-files").set_input_files(
        [{"name": RADIOGRAPH.name, "mimeType": "image/jpeg", "buffer": RADIOGRAPH.read_bytes()}]
    )

    result = page.locator(".upload-result--error")
    expect(result).to_have_text(
        "✕ Not accepted. The image could not be saved just now because Pleura's image storage is unavailable. "
        "Nothing was stored: please send it again in a minute. Try again"
    )
    screenshot(page, "12-upload-storage-down")
    assert Study.objects.count() == 0

    settings.MEDIA_ROOT = mounted
    page.get_by_label("Patient ID (optional)").fill("MRN-SOMEONE-ELSE")
    result.get_by_role("button", name=f"Try again: {RADIOGRAPH.name}").click()
    expect(page.locator(".upload-result--ok")).to_contain_text(
        "Received and queued for analysis · filed under patient ID MRN-RETRY-1."
    )
    expect(page.locator(".upload-result--error")).to_have_count(0)
    assert list(Study.objects.values_list("patient_id", flat=True)) == ["MRN-RETRY-1"]
    broker.purge()  # the upload's message, for a worker this test does not run


def test_a_study_whose_images_cannot_be_read_says_so_and_shows_them_once_the_storage_is_back(
    chromium, live_server, screenshot, settings, tmp_path, doctor, hospital_a, make_study
):
    # Stored as a predicted study, not uploaded: an upload would queue a message for a
    # worker this test does not run, left in the broker for later tests.
    study = make_study(hospital_a, label="pneumonia", probability=0.91)
    mounted = settings.MEDIA_ROOT
    settings.MEDIA_ROOT = unreachable_media_root(tmp_path)
    page = sign_in(chromium, live_server, doctor)

    page.goto(f"{live_server.url}/studies/{study.code}/")
    page.get_by_role("checkbox", name="Heatmap").check()
    notice = page.get_by_role("alert")
    expect(notice).to_contain_text(
        "The radiograph and the heatmap cannot be shown just now: Pleura's image storage is unavailable. "
        "Please try again in a minute."
    )
    expect(page.locator("[data-image]")).to_be_hidden()
    screenshot(page, "13-study-images-storage-down")

    settings.MEDIA_ROOT = mounted
    notice.get_by_role("button", name="Try again").click()
    expect(notice).to_be_hidden()
    expect(page.locator("[data-image]")).to_be_visible()
    assert page.locator("[data-image]").evaluate("image => image.naturalWidth") == study.columns
    # The heatmap is fetched lazily (7c539b7): it may arrive a moment after the radiograph.
    heatmap = page.locator("[data-heatmap]")
    wait_for(lambda: heatmap.evaluate("image => image.complete && image.naturalWidth > 0"), 10, what="heatmap loaded")
    screenshot(page, "14-study-images-back")
