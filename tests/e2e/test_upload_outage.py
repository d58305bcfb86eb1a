"""A doctor's upload while the image storage is down: the page shows the server's own
words for the 503, not a generic failure, and nothing is stored."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from diagnostics.models import Study
from tests.conftest import unreachable_media_root
from tests.e2e.test_portal_journey import RADIOGRAPH, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_upload_while_the_storage_is_down_shows_why_and_when_to_retry(
    chromium, live_server, screenshot, settings, tmp_path, doctor
):
    settings.MEDIA_ROOT = unreachable_media_root(tmp_path)
    page = sign_in(chromium, live_server, doctor)

    page.get_by_role("link", name="Upload", exact=True).click()
    page.locator("#upload-files").set_input_files(
        [{"name": RADIOGRAPH.name, "mimeType": "image/jpeg", "buffer": RADIOGRAPH.read_bytes()}]
    )

    result = page.locator(".upload-result--error")
    expect(result).to_have_text(
        "✕ Not accepted. The image could not be saved just now because Pleura's image storage is unavailable. "
        "Nothing was stored: please send it again in a minute."
    )
    screenshot(page, "09-upload-storage-down")
    assert Study.objects.count() == 0
