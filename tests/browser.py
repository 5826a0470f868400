"""Headless Chromium for the browser tests (Selenium over the system's chromedriver, installed by
scripts/setup_browser.sh from Debian's packages). Screenshots and timings go to test-artifacts/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def start_chromium():
    """A headless Chromium session; RuntimeError saying how to install one when it is missing."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        raise RuntimeError("headless Chromium is missing: bash scripts/setup_browser.sh installs it")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    # the driver path given: Selenium Manager never looks for (or downloads) a driver
    return webdriver.Chrome(options=options, service=Service(driver_path))


def wait_for(driver, condition, timeout: float = 60.0, message: str = ""):
    """Poll `condition(driver)` until truthy. An element the page replaced while it was read (the model panel is
    redrawn whole) counts as not yet, like one not there yet."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    waiting = WebDriverWait(driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException])
    return waiting.until(condition, message)


def page_load_ms(driver) -> float:
    """Navigation start to the load event of the current page, from the browser's Navigation Timing."""
    return driver.execute_script(
        "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd - n.startTime;"
    )


def save_artifacts(driver, name: str, facts: dict) -> Path:
    """A screenshot and the measured facts (load time ...) under test-artifacts/, kept after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(facts, indent=2) + "\n")
    print(f"{name}: {facts} (screenshot {ARTIFACTS / name}.png)")
    return ARTIFACTS / f"{name}.png"
