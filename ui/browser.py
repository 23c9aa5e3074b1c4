"""Driving the app in a headless Chromium (selenium): the browser tests, the first-caption benchmark and the
README screenshots share these helpers."""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-output" / "screenshots"   # what a timeout showed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def new_driver(width: int = 1400, height: int = 1800):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        raise RuntimeError("Chromium is missing: run `bash scripts/setup.sh test` (installs chromium, chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--window-size={width},{height}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    return driver


def wait_for_text(driver, text: str, timeout: float = 120) -> None:
    """Wait until the page shows ``text``; on a timeout keep a screenshot of what it showed instead."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, timeout).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), text))
    except Exception:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"timeout-{''.join(c for c in text if c.isalnum())[:30]}.png"))
        raise


def click_label(driver, text: str, timeout: float = 120) -> None:
    """Click the widget label showing ``text`` once it is rendered and clickable (a spinner overlay or a
    re-render may get in the way for a moment; those are retried)."""
    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def click(d):
        label = next((e for e in d.find_elements(By.CSS_SELECTOR, "label") if e.text == text), None)
        if label is None:
            return False
        label.click()
        return True

    wait_for_text(driver, text, timeout)
    WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,
                                                       ElementClickInterceptedException)).until(click)


def choose_option(driver, label: str, option: str, sidebar: bool = False) -> None:
    """Open the select box labelled ``label`` (in the sidebar or the page) and pick the option holding ``option``."""
    import time

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    in_sidebar = 'return arguments[0].closest(\'[data-testid="stSidebar"]\') !== null;'
    boxes = [b for b in driver.find_elements(By.CSS_SELECTOR, '[data-testid="stSelectbox"]')
             if bool(driver.execute_script(in_sidebar, b)) == sidebar]
    box = next(b for b in boxes if label in b.text)          # its text is the label (the value is an input's)
    ActionChains(driver).move_to_element(box).click().perform()
    time.sleep(1)
    next(o for o in driver.find_elements(By.CSS_SELECTOR, '[role="option"]') if option in o.text).click()
