"""Headless Chromium for the tests that drive the fleet page, through selenium and the system
chromedriver (Debian's ``chromium`` and ``chromium-driver``; ``bash .ci/test`` installs them).

Without them the browser tests skip on a developer's machine and fail with a clear message
in CI (``CI=true``), where a missing browser is a broken install, not a reason to pass.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
INSTALL_HINT = "apt-get install -y chromium chromium-driver, and pip install selenium"


def _missing(what: str) -> None:
    message = f"{what} is missing, so the fleet page cannot be tested in a browser: {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _find(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium window of 1360×900, closed after the test."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium (the Python package)")
    binary = _find(("chromium", "chromium-browser", "google-chrome"))
    driver = _find(("chromedriver",))
    if binary is None:
        _missing("Chromium (the chromium package)")
    if driver is None:
        _missing("chromedriver (the chromium-driver package)")
    options = Options()
    options.binary_location = str(binary)
    # --no-sandbox: Chromium refuses to run as root otherwise (CI containers run as root).
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1360,900",
        "--lang=en-GB",
    ):
        options.add_argument(argument)
    window = webdriver.Chrome(service=Service(executable_path=str(driver)), options=options)
    try:
        yield window
    finally:
        window.quit()


@pytest.fixture
def artifacts() -> Path:
    """Where browser tests keep their screenshots (git-ignored; CI may upload it)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
