"""A real browser for the viewer's tests: Debian's headless Chromium driven by chromedriver (selenium)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import numpy as np

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"))
                 if p and Path(p).exists()), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and Path(p).exists()), None)
INSTALL_HINT = "apt-get install -y chromium chromium-driver, and pip install selenium (.ci/run does both)"


def missing() -> str | None:
    """Why the browser cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed: {INSTALL_HINT}"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return f"Chromium or chromedriver is not installed: {INSTALL_HINT}"
    return None


class Browser:
    """Headless Chromium at a fixed window size and a device scale of 1, so screenshot pixels are CSS pixels."""

    def __init__(self, width: int = 1280, height: int = 960):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--force-device-scale-factor=1", f"--window-size={width},{height}", "--no-first-run",
                     "--disable-extensions", "--hide-scrollbars"):
            options.add_argument(flag)
        # chromedriver from the Debian package: selenium must not try to download a driver.
        self.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)

    def open(self, url: str):
        self.driver.get(url)

    def run(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, script: str, timeout: float = 60.0, step: float = 0.2):
        """Poll a JavaScript expression until it is truthy; returns its last value."""
        deadline = time.monotonic() + timeout
        value = self.run(f"return ({script});")
        while not value and time.monotonic() < deadline:
            time.sleep(step)
            value = self.run(f"return ({script});")
        return value

    def text(self, element_id: str) -> str:
        return self.run("return document.getElementById(arguments[0]).textContent;", element_id)

    def screenshot(self) -> np.ndarray:
        """The visible page as a BGR image."""
        png = self.driver.get_screenshot_as_png()
        return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)

    def rect(self, element_id: str) -> tuple[int, int, int, int]:
        """An element's box in the screenshot: x, y, width, height."""
        r = self.run("const r = document.getElementById(arguments[0]).getBoundingClientRect();"
                     "return [r.left, r.top, r.width, r.height];", element_id)
        return tuple(int(round(v)) for v in r)

    def close(self):
        self.driver.quit()
