"""A real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright's sync API, for the console's
browser tests. Never `playwright install`: the browser is the system's (.ci/run installs it).

The flags keep Chromium on loopback: the machine's network is closed, and without them Chromium tries
outside hosts (component updates, sync, QUIC probes). Playwright's `launch` gives it a fresh temporary
user-data-dir; each test gets a context of its own (no cookies from another test).

Screenshots: with MAILWORKER_SCREENSHOTS=<dir> (`make screenshots` sets docs/img), `screenshot(page,
name)` writes <dir>/<name>.png; otherwise it does nothing, so a plain test run leaves docs/ alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1360, "height": 900}


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Any) -> Iterator[Any]:
    """A fresh browser context and page; every dialog (alert, confirm) is recorded in `page.dialogs`."""
    context = chromium.new_context(viewport=VIEWPORT)
    context.set_default_timeout(20_000)
    tab = context.new_page()
    dialogs: list[str] = []
    tab.dialogs = dialogs

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    yield tab
    context.close()


def screenshot(page: Any, name: str, *, full_page: bool = True) -> Path | None:
    folder = os.environ.get("MAILWORKER_SCREENSHOTS")
    if not folder:
        return None
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path
