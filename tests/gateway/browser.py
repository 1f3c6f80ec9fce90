"""Headless Chromium driven by Selenium, from Debian's packages only.

``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (Debian's ``chromium`` and
``chromium-driver``, the same version) come from ``scripts/bootstrap.sh``, with
``fonts-noto-cjk`` so that a Chinese page's screenshot can be read. Selenium gets both
paths, so its manager never looks for (or downloads) a browser or a driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
#: Where the browser tests leave their screenshots for a person to look at.
SCREENSHOTS = Path.home() / ".cache" / "editflow" / "reports" / "screenshots"


def available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


@contextmanager
def chromium(workdir: Path, *, lang: str = "en-US") -> Iterator[Any]:
    """A headless Chromium WebDriver with its own profile under ``workdir``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: the sandbox needs user namespaces
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1000",
        f"--lang={lang}",
        f"--user-data-dir={workdir / 'chromium-profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(workdir / "driver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        driver.quit()


def console(driver: Any) -> list[str]:
    """The page's console lines so far (for a failure's message)."""
    return [entry.get("message", "") for entry in driver.get_log("browser")]


def screenshot(driver: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path
