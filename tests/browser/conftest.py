"""Browser tests: Debian's headless Chromium driven by Playwright (through its
`executable_path`; Playwright's own browser download is not used), against real coordinator
and provider processes on loopback.

Set MOONFLOWER_SCREENSHOTS to a directory to have the tests save a picture of each page
there (`scripts/screenshots` does, into docs/console/); otherwise they write nothing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

pytestmark = pytest.mark.slow

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is needed for browser tests; scripts/install-servers installs it")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            launched.close()


class Screenshots:
    def __init__(self, directory: str | None) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def take(self, page: Page, name: str) -> None:
        if self.directory is not None:
            page.screenshot(path=str(self.directory / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def screenshots() -> Screenshots:
    return Screenshots(os.environ.get("MOONFLOWER_SCREENSHOTS"))
