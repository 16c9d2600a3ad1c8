"""Headless Chromium through Playwright, for tests that look at a page as a person would.

Playwright's own browser download cannot work here (no internet), so the tests drive Debian's
chromium package, which `python3 infra/dev.py test` installs when it is missing. A missing
browser fails the test; it never skips it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Response, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# Root needs --no-sandbox; the network flags stop Chromium calling Google on this closed network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SCREENSHOTS = ROOT / "test-artifacts"  # gitignored; CI keeps whatever lands here
VIEWPORT = {"width": 1400, "height": 900}
PAGE_TIMEOUT_MS = 30_000  # a single-page app on a busy 2-core machine; waits end on a selector


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, closed again afterwards."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `python3 infra/dev.py test` installs it, "
                    "or run `apt-get install -y chromium`", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def failed_calls(page: Page, url_prefix: str, harmless: tuple[str, ...] = ()) -> list[str]:
    """A list that fills with every request under `url_prefix` answered with 4xx or 5xx.

    A failure whose request body contains one of the `harmless` strings is left out.
    """
    failures: list[str] = []

    def record(response: Response) -> None:
        if not response.url.startswith(url_prefix) or response.status < 400:
            return
        body = response.request.post_data or ""
        if not any(known in body for known in harmless):
            failures.append(f"{response.status} {response.request.method} {response.url} {body}")

    page.on("response", record)
    return failures


def screenshot(page: Page, name: str) -> Path:
    """Save the whole page as test-artifacts/NAME.png, for a person to look at after the run."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
