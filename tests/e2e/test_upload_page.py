"""The upload page in Chromium, beyond the journey's one file: files waiting their turn
keep the identifiers typed when they were added, and leaving the page while files are
on their way asks first."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import expect

from diagnostics.models import Study
from tests.e2e.test_portal_journey import RADIOGRAPH, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def wait_for_held(page, held: list, count: int, seconds: float = 10) -> None:
    """Let the page run until `count` uploads are held by the test's route."""
    deadline = time.monotonic() + seconds
    while len(held) < count:
        assert time.monotonic() < deadline, f"{len(held)} of {count} uploads sent in {seconds} s"
        page.wait_for_timeout(20)


def test_files_waiting_their_turn_keep_the_identifiers_typed_when_they_were_added(
    chromium, live_server, doctor, broker
):
    radiographs = sorted(RADIOGRAPH.parent.glob("*.jpeg"))[:4]
    page = sign_in(chromium, live_server, doctor)
    page.get_by_role("link", name="Upload", exact=True).click()
    held = []  # the first two uploads (the page sends two at a time), held on the way

    def hold_the_first_two(upload):
        if len(held) < 2:
            held.append(upload)
        else:
            upload.continue_()

    page.route("**/upload/", hold_the_first_two)

    page.get_by_label("Patient ID (optional)").fill("MRN-FIRST")
    page.get_by_label("Accession number (optional)").fill("ACC-FIRST")
    page.locator("#upload-files").set_input_files(radiographs[:3])
    wait_for_held(page, held, 2)
    page.get_by_label("Patient ID (optional)").fill("MRN-NEXT")
    page.get_by_label("Accession number (optional)").fill("ACC-NEXT")
    for upload in held:
        upload.continue_()
    page.locator("#upload-files").set_input_files(radiographs[3:])

    expect(page.locator(".upload-result--ok")).to_have_count(4)
    sent = Study.objects.order_by("original_size").values_list("original_size", "patient_id", "accession_number")
    first = [("MRN-FIRST", "ACC-FIRST")] * 3
    assert sorted(sent) == sorted(
        (path.stat().st_size, *ids) for path, ids in zip(radiographs, [*first, ("MRN-NEXT", "ACC-NEXT")], strict=True)
    )
    broker.purge()


def test_leaving_the_page_while_files_are_on_their_way_asks_first(chromium, live_server, doctor):
    page = sign_in(chromium, live_server, doctor)
    page.get_by_role("link", name="Upload", exact=True).click()
    held = []
    page.route("**/upload/", lambda upload: held.append(upload))
    page.locator("#upload-files").set_input_files(RADIOGRAPH)
    wait_for_held(page, held, 1)

    with page.expect_event("dialog", timeout=5000) as asked:
        page.close(run_before_unload=True)
    asked.value.dismiss()  # the doctor stays

    assert asked.value.type == "beforeunload"
    assert not page.is_closed()
    assert Study.objects.count() == 0
