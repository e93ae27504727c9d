"""A real headless Chromium from Debian's packages, driven through its chromedriver.

selenium is the client: it speaks the W3C WebDriver protocol to the system chromedriver
(``Service('/usr/bin/chromedriver')``), so no browser or driver is downloaded and the
browser is the one apt keeps patched. scripts/chromium-install installs both when missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.bridge.conftest import make_bridge, receiver  # noqa: F401 - shared fixtures

REPO = Path(__file__).resolve().parents[2]
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


def _installed() -> tuple[str, str]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    proc = subprocess.run([str(REPO / "scripts" / "chromium-install")], capture_output=True, text=True, check=False)
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert proc.returncode == 0 and chromium and driver, f"scripts/chromium-install failed:\n{proc.stderr[-3000:]}"
    return chromium, driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a fresh profile, no network besides loopback pages we open."""
    chromium, driver = _installed()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.add_argument("--window-size=1200,1700")
    chrome = webdriver.Chrome(options=options, service=Service(driver))
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()
