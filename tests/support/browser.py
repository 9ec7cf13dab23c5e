"""A real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright's sync API, for the console's
browser tests. Never `playwright install`: the browser is the system's (.ci/run installs it).

The flags keep Chromium on loopback: the machine's network is closed, and without them Chromium tries
outside hosts (component updates, sync, QUIC probes). Playwright's `launch` gives it a fresh temporary
user-data-dir; each test gets a context of its own (no cookies from another test).

Screenshots: `screenshot(page, name)` writes <dir>/<name>.png, <dir> being MAILWORKER_SCREENSHOTS
(`make screenshots` sets docs/img) or else a folder in the temporary directory: every test run takes them
(a page that cannot be drawn fails), and a plain run leaves docs/ alone.

Without Chromium the browser tests skip, unless MAILWORKER_REQUIRE_BROWSER=1 (.ci/run sets it): then they
fail, so CI never passes without having run them.
"""

from __future__ import annotations

import os
import tempfile
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
        missing = f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)"
        if os.environ.get("MAILWORKER_REQUIRE_BROWSER") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
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


def screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
    folder = (
        os.environ.get("MAILWORKER_SCREENSHOTS") or Path(tempfile.gettempdir()) / "mailworker-screenshots"
    )
    path = Path(folder) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return path
