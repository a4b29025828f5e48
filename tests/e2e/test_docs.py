"""/docs in headless Chromium: Swagger UI renders every operation from packaged files only."""

from __future__ import annotations

import requests

from scripts.stack import ROOT
from tests.e2e.test_dashboard import browser_page  # noqa: F401 - the fixture, shared
from tests.support.stack import Stack

SCREENSHOT = ROOT / "tests" / "artifacts" / "docs.png"


def test_the_docs_page_renders_every_operation_offline(stack: Stack, browser_page) -> None:  # noqa: F811
    page = browser_page
    elsewhere: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(stack.api) else elsewhere.append(r.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    document = requests.get(stack.url("/openapi.json"), timeout=30).json()
    operations = sum(len(item) for item in document["paths"].values())

    page.goto(stack.url("/docs"))
    page.wait_for_selector(".opblock")
    assert page.locator(".opblock").count() == operations
    assert "OAS 3.1" in page.locator(".information-container").inner_text()
    page.locator(".opblock-summary-path", has_text="/v1/jobs").first.click()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=False)
    assert not elsewhere, elsewhere
    assert not errors, errors
