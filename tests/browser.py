"""A real headless browser for the web console's tests: Debian's chromium,
driven through its chromium-driver by Selenium, and the directory where
the tests leave their screenshots (`build/screenshots/`, which `make test`
fills)."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SCREENSHOT_DIR = REPO / "build" / "screenshots"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # as root, chromium refuses to start with its sandbox
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",  # nothing but the page under test: no updates, no sync
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--force-device-scale-factor=1",
    "--lang=en-US",
)


def chromium_missing() -> str | None:
    """Why the browser cannot run, or None."""
    for program in ("chromium", "chromedriver"):
        if shutil.which(program) is None:
            return f"{program} is not installed (scripts/bootstrap test installs Debian's chromium and chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


@contextmanager
def headless_chromium(width: int = 1440, height: int = 900) -> Iterator[Any]:
    """A Selenium WebDriver on a fresh headless chromium (empty profile),
    quit and its profile removed afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="vmhooks-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    # The driver's path is given: Selenium Manager, which would download one, never runs.
    service = Service(executable_path=shutil.which("chromedriver") or "chromedriver", log_output=os.devnull)
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def full_page_screenshot(driver: Any, name: str) -> Path:
    """The whole page (not just the window) as build/screenshots/<name>.png."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    width = driver.execute_script("return Math.max(document.documentElement.scrollWidth, 1024)")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(max(int(width), 1024), min(max(int(height), 600), 6000))
    path = SCREENSHOT_DIR / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"chromium could not save {path}"
    return path
