"""The dashboard in a real headless Chromium (Debian's, driven by its chromedriver via Selenium):
log in, see a dead letter, click Replay, see it gone."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

from tests.fixtures.stack import ADMIN_TOKEN, Stack, wait_for
from tests.operators.conftest import dead_letter_via_stack

HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def find(browser: webdriver.Chrome, css: str) -> WebElement:
    """Wait for an element: a click on a submit button returns before the next page loads."""
    element: WebElement = WebDriverWait(browser, 15).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )
    return element


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    """Headless Chromium; CI installs it (.ci/run), elsewhere the test is skipped without it."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver_path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver must be installed in CI")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.save_screenshot(str(tmp_path / "last-page.png"))
        driver.quit()


def test_log_in_see_a_dead_letter_replay_it(stack: Stack, browser: webdriver.Chrome) -> None:
    entry = dead_letter_via_stack(stack, "user_browser", "瀏覽器")
    stack.sandbox.control.create_customer("b@x.tw", external_id="user_browser")

    browser.get(stack.web_url + "/admin")
    assert browser.current_url.endswith("/admin/login")
    find(browser, "#token").send_keys(ADMIN_TOKEN)
    find(browser, "button[type=submit]").click()
    row = find(browser, f"tr[data-id='{entry['id']}']")
    assert "user_browser" in row.text
    assert "not_found" in row.text

    row.find_element(By.NAME, "replay").click()
    assert "Replayed 1" in find(browser, "#notice").text

    def gone() -> bool:
        browser.get(stack.web_url + "/admin")
        return not browser.find_elements(By.CSS_SELECTOR, f"tr[data-id='{entry['id']}']")

    wait_for(gone, interval=0.3)
    assert find(browser, "#no-dead-letters").text == "No dead letters."
    customer = stack.sandbox.control.customer_by_external_id("user_browser")
    assert customer is not None
    assert customer["name"] == "瀏覽器"
