"""The operator pages in a real headless Chromium against the real web and worker processes:
search a user and read its timeline after a 503-then-200 sync, see the charts drawn after
traffic, open a dead letter's triage. Each page is saved as a PNG: into docs/screenshots/ (the
README's) with UPDATE_SCREENSHOTS=1, else beside the test's temporary files, so that a plain
test run leaves the checkout clean."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.fixtures.stack import ADMIN_TOKEN, Stack, user_event, wait_for
from tests.operators.conftest import dead_letter_via_stack
from tests.operators.test_browser import browser, find

__all__ = ["browser"]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WINDOW = (1280, 1400)
PAGE_WINDOW = (1280, 720)
BASELINE_Y = 130.0
"""The y of a chart's zero line (charts.HEIGHT - charts.PAD_BOTTOM)."""


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where this run's screenshots go."""
    directory = SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def save(browser: webdriver.Chrome, directory: Path, name: str) -> None:
    assert browser.save_screenshot(str(directory / f"{name}.png"))


def drawn_above_zero(browser: webdriver.Chrome, series: str) -> bool:
    """Whether a chart's line for `series` has a point above its zero line."""
    lines = browser.find_elements(By.CSS_SELECTOR, f"polyline[data-series='{series}']")
    ys = [
        float(point.split(",")[1])
        for line in lines
        for point in (line.get_attribute("points") or "").split()
    ]
    return any(y < BASELINE_Y for y in ys)


def test_search_a_user_read_its_story_and_see_the_charts(
    stack: Stack, browser: webdriver.Chrome, screenshots: Path
) -> None:
    stack.sandbox.control.create_customer("story@x.tw", external_id="user_story", name="old")
    stack.sandbox.control.set_faults(scripts={"user_story": [503, 200]})
    response = stack.post(user_event("evt_story", "user_story", name="Wang Xiaoming"))
    assert response.status_code == 202

    def applied() -> bool:
        customer = stack.sandbox.control.customer_by_external_id("user_story")
        return customer is not None and customer["name"] == "Wang Xiaoming"

    wait_for(applied)
    entry = dead_letter_via_stack(stack, "user_missing", "nobody")
    browser.set_window_size(*WINDOW)

    browser.get(stack.web_url + "/admin/login")
    find(browser, "#token").send_keys(ADMIN_TOKEN)
    find(browser, "button[type=submit]").click()
    find(browser, "#chart-events")

    def charts_have_traffic() -> bool:
        browser.get(stack.web_url + "/admin?refresh=off")
        find(browser, "#chart-patches")
        return all(
            drawn_above_zero(browser, series)
            for series in ("events_accepted", "patches_2xx", "patches_5xx", "latency_p50_seconds")
        )

    wait_for(charts_have_traffic, interval=0.5)
    legend = find(browser, "#chart-dead-letters .key[data-series='dead_letters_not_found']")
    assert int(legend.get_attribute("data-points") or 0) > 0
    save(browser, screenshots, "dashboard")

    browser.set_window_size(*PAGE_WINDOW)
    search = find(browser, "#user_id")
    search.send_keys("user_story")
    find(browser, "#user-search button[type=submit]").click()
    find(browser, "#timeline")
    assert browser.current_url.endswith("/admin/users/user_story")
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
    kinds = [row.get_attribute("data-kind") for row in rows]
    assert kinds == ["attempt", "attempt", "event"]
    assert "PATCH name -> 200: applied" in rows[0].text
    assert "503 service_unavailable" in rows[1].text
    assert "quick retry" in rows[1].text
    assert "merged" in rows[2].text
    name_row = find(browser, "#fields tr[data-field='name']")
    assert "Wang Xiaoming" in name_row.text
    assert "same" in name_row.text
    save(browser, screenshots, "user")

    browser.get(stack.web_url + f"/admin/dead-letters/{entry['id']}")
    triage = find(browser, "#triage")
    assert "(no customer)" in triage.text
    save(browser, screenshots, "dead-letter")
