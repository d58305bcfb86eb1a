"""A real headless Chromium (Debian's package, driven by Python playwright) against a
live server, with the pipeline's real broker and Celery worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, missing
from tests.pipeline.conftest import _no_wake_up_waiting, broker, make_model_version, start_worker  # noqa: F401  (fixtures)
from tests.portal.conftest import make_study, model_version  # noqa: F401  (fixtures)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"


@pytest.fixture(scope="session")
def chromium():
    if not CHROMIUM.exists():
        missing("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls the test
    # makes between browser steps are still plain synchronous code.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def screenshot():
    """`screenshot(page, "01-login")` saves test-artifacts/screenshots/01-login.png: the
    whole page from the top; `as_scrolled=True`: only what the window shows where it is."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def take(page, name: str, *, as_scrolled: bool = False) -> Path:
        path = SCREENSHOTS / f"{name}.png"
        if not as_scrolled:
            # From the top, so the sticky header sits where a person would see it.
            page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(path), full_page=not as_scrolled)
        return path

    return take


@pytest.fixture
def e2e_model(db, tmp_path):
    """The active model: the real ResNet-18 architecture, small input, fixed seed."""
    from mlcore import registry

    registry.engines.clear()
    yield make_model_version(tmp_path, name="pleura-resnet18-e2e", seed=3, image_size=64)
    registry.engines.clear()
