"""The API's interactive docs in Chromium, under the Content-Security-Policy that the
shipped nginx sends: an integrator opening /api/v1/docs/ sees the operations."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def shipped_csp() -> str:
    template = (REPO_ROOT / "deploy" / "nginx" / "pleura.conf.template").read_text()
    return re.search(r'add_header Content-Security-Policy "([^"]+)"', template).group(1)


def test_the_docs_render_every_operation_under_the_shipped_csp(chromium, live_server, screenshot):
    page = chromium.new_context().new_page()
    refused = []
    page.on(
        "console", lambda message: refused.append(message.text) if "Content Security Policy" in message.text else None
    )

    def with_csp(route):
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, "content-security-policy": shipped_csp()})

    page.route(f"{live_server.url}/**", with_csp)
    page.goto(f"{live_server.url}/api/v1/docs/")

    expect(page.locator(".opblock").first).to_be_visible()
    # The list, search, upload, a study, its image, heatmap and withdrawal, and two DICOMweb stores.
    assert page.locator(".opblock").count() == 9
    assert refused == []
    screenshot(page, "22-api-docs")
