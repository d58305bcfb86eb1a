"""The heatmap is fetched, and recorded as seen, when the doctor switches it on: it was
fetched hidden with every opening of a study, and the trail said each reader had looked at
the model's overlay they never showed (admin review)."""

from __future__ import annotations

import pytest

from hospital.models import AuditEvent
from tests.e2e.test_portal_journey import sign_in, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def images_seen() -> list[str]:
    return [event.detail["image"] for event in AuditEvent.objects.filter(action="study.image_viewed").order_by("id")]


def test_the_heatmap_is_fetched_and_audited_only_when_switched_on(
    chromium, live_server, doctor, hospital_a, make_study
):
    study = make_study(hospital_a, label="pneumonia", probability=0.8)
    page = sign_in(chromium, live_server, doctor)
    page.goto(f"{live_server.url}/studies/{study.code}/")
    image = page.locator("img[data-image]")
    wait_for(lambda: image.evaluate("img => img.complete && img.naturalWidth > 0"), 10, what="radiograph loaded")
    page.wait_for_load_state("networkidle")

    assert images_seen() == ["display"]
    page.get_by_label("Heatmap", exact=True).check()
    heatmap = page.locator("img[data-heatmap]")
    wait_for(lambda: heatmap.evaluate("img => img.complete && img.naturalWidth > 0"), 10, what="heatmap loaded")
    assert images_seen() == ["display", "heatmap"]
