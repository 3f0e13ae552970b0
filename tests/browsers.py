"""Headless Chromium for the browser tests: the Debian package, driven by Playwright, and the screenshots they take
(copied to $RLHF_SCREENSHOTS_DIR when set: `docs/images` holds the README's and the docs' pictures)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = "/usr/bin/chromium"
WAIT = 60_000  # ms: the UIs are JS apps that load their data after the page


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        yield browser
        browser.close()


def screenshot(page, path: Path, full_page: bool = True) -> None:
    """Into the test's temp dir; also into $RLHF_SCREENSHOTS_DIR when set."""
    page.screenshot(path=path, full_page=full_page)
    assert path.is_file() and path.stat().st_size > 0
    if os.environ.get("RLHF_SCREENSHOTS_DIR"):
        shutil.copyfile(path, Path(os.environ["RLHF_SCREENSHOTS_DIR"]) / path.name)
