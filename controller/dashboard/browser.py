"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``, which ``make test``
installs where missing) driven by Selenium: for the dashboard's browser tests and for taking
its screenshot. Selenium comes with the ``dev`` extra."""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
)
"""Headless, and without the background connections a closed network refuses."""


def missing() -> str | None:
    """Why no browser can be started here (None when one can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is missing: make test installs chromium and chromium-driver"
    return None


def chromium(width: int = 1500, height: int = 1000) -> Any:
    """A headless Chromium window of that size, in a profile of its own (quit it when done)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        *FLAGS,
        f"--window-size={width},{height}",
        f"--user-data-dir={tempfile.mkdtemp(prefix='tickmpc-chromium-')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
