"""The session browser's page in a real headless Chromium (Debian's, driven by selenium).

Screenshots go to test-artifacts/browser/ at the repository root (git-ignored) to be looked at.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from async_session_logger import SessionLogger

from .conftest import HOSTILE, Served, write_story

ARTIFACTS = Path(__file__).parents[2] / "test-artifacts" / "browser"
Serve = Callable[..., Served]


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    """One headless Chromium for the module (as root it needs --no-sandbox)."""
    options = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.binary_location = "/usr/bin/chromium"
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    chrome.set_page_load_timeout(30)
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture(autouse=True)
def blank_page(driver: WebDriver) -> None:
    """Each test starts on a blank page with an empty console log.

    The driver outlives each test's server: the last test's page would go on polling its stopped
    server and log "connection refused" into the next test's console (seen once in CI).
    """
    driver.get("about:blank")
    driver.get_log("browser")


def _wait(driver: WebDriver, check: Callable[[WebDriver], object], timeout: float = 10) -> None:
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(check)


def _rows(driver: WebDriver) -> list[str]:
    # Read in one script: the live page may re-render the rows between two WebDriver calls.
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#sessions tbody tr[data-session-id]')]"
        ".map((row) => row.dataset.sessionId)"
    )
    return found


def _text(driver: WebDriver, selector: str) -> str:
    found: str = driver.execute_script(
        "const node = document.querySelector(arguments[0]); return node ? node.innerText : ''",
        selector,
    )
    return found


def _shot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def _no_console_errors(driver: WebDriver) -> None:
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == [], severe


@pytest.fixture
def story(serve: Serve, tmp_path: Path) -> tuple[Served, Path, list[str]]:
    """A served log file written by the real logger, and its session ids."""
    log = tmp_path / "app.jsonl"
    ids = write_story(log)
    return serve(log), log, ids


def test_the_list_shows_every_session(
    driver: WebDriver, story: tuple[Served, Path, list[str]]
) -> None:
    """The list shows one row per session, with each one's status badge."""
    served, _, ids = story
    driver.get(served.url)
    _wait(driver, lambda d: len(_rows(d)) == len(ids))
    assert sorted(_rows(driver)) == sorted(ids)
    badges = {
        row.get_attribute("data-session-id"): row.find_element(By.CSS_SELECTOR, ".badge").text
        for row in driver.find_elements(By.CSS_SELECTOR, "#sessions tbody tr[data-session-id]")
    }
    assert badges["req-2"] == "error" and badges["req-0"] == "closed"
    assert driver.find_element(By.ID, "range").text == f"1\u2013{len(ids)} of {len(ids)}"
    _wait(driver, lambda d: d.find_element(By.ID, "live").text == "live")
    _shot(driver, "list")
    _no_console_errors(driver)


def test_the_status_filter_leaves_the_failed_ones(
    driver: WebDriver, story: tuple[Served, Path, list[str]]
) -> None:
    """Choosing status error leaves only failed sessions, and the URL carries the filter."""
    served, _, _ = story
    driver.get(served.url)
    _wait(driver, lambda d: len(_rows(d)) > 2)
    Select(driver.find_element(By.ID, "f-status")).select_by_value("error")
    _wait(driver, lambda d: sorted(_rows(d)) == ["req-2", "req-5"])
    assert "status=error" in driver.current_url
    _shot(driver, "list-errors")
    driver.back()
    _wait(driver, lambda d: len(_rows(d)) > 2)
    driver.forward()
    _wait(driver, lambda d: sorted(_rows(d)) == ["req-2", "req-5"])
    _no_console_errors(driver)


def test_the_session_page_shows_its_entries_in_order(
    driver: WebDriver, story: tuple[Served, Path, list[str]]
) -> None:
    """A session page: entries in seq order, metadata, one axis mark per entry, a traceback in
    a <pre>, the child tree, a gap where the file misses a seq."""
    served, _, _ = story
    driver.get(served.url + "sessions/req-2")
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#entries tr.entry")) == 4)
    rows = driver.find_elements(By.CSS_SELECTOR, "#entries tr.entry")
    assert [r.get_attribute("data-seq") for r in rows] == ["0", "1", "2", "3"]
    messages = [r.find_element(By.CSS_SELECTOR, "td.message span").text for r in rows]
    assert messages == ["Session started", "handling item 2", "it failed", "Session closed"]
    trace = driver.find_element(By.CSS_SELECTOR, "#entries pre.trace").text
    assert "Traceback" in trace and "ValueError: bad item 2" in trace
    assert len(driver.find_elements(By.CSS_SELECTOR, "#axis .mark")) == 4
    metadata = driver.find_element(By.ID, "s-metadata").text
    assert "user_id" in metadata and "u2" in metadata
    _shot(driver, "session-error")
    # The same page in the dark scheme, for a look at its colours (media emulation, no reload).
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {"features": [{"name": "prefers-color-scheme", "value": "dark"}]},
    )
    _shot(driver, "session-error-dark")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    driver.get(served.url + "sessions/parent-1")
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#children a"))
    assert driver.find_element(By.CSS_SELECTOR, "#children a").text == "child-1"
    driver.find_element(By.CSS_SELECTOR, "#children a").click()
    _wait(driver, lambda d: d.find_element(By.ID, "s-id").text == "child-1")
    assert driver.find_element(By.ID, "s-parent-link").text == "parent-1"
    _no_console_errors(driver)


def test_a_gap_is_marked(driver: WebDriver, serve: Serve, tmp_path: Path) -> None:
    """A seq missing from the file shows as a gap row and a mark on the axis."""
    log = tmp_path / "gap.jsonl"
    with SessionLogger(method="file", path=log, dead_letter_path=None) as logger:
        logger.start_session("holes")
        for i in range(6):
            logger.log_entry("holes", f"entry {i}", logging.INFO)
        logger.close_session("holes")
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:3] + lines[5:]))  # seqs 3 and 4 gone
    served = serve(log)
    driver.get(served.url + "sessions/holes")
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#entries tr.gap-row"))
    assert "2 entries missing" in driver.find_element(By.CSS_SELECTOR, "tr.gap-row").text
    assert "2 missing" in driver.find_element(By.CSS_SELECTOR, "#axis .gap-mark").text
    _shot(driver, "session-gap")


def test_an_appended_entry_appears_within_two_seconds(
    driver: WebDriver, story: tuple[Served, Path, list[str]]
) -> None:
    """An entry a real logger appends to the served file shows on the open session page within
    2 s, and a new session on the list."""
    served, log, _ = story
    with SessionLogger(method="file", path=log, dead_letter_path=None) as logger:
        logger.start_session("growing", metadata={"live": True})
        logger.log_entry("growing", "first", logging.INFO)
        logger.save_logs()
        # Opened once the server has read it (it polls the file; before, the page says 404).
        _wait(driver, lambda _: httpx.get(served.url + "api/sessions/growing").status_code == 200)
        driver.get(served.url + "sessions/growing")
        _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#entries tr.entry")) == 2)
        _wait(driver, lambda d: d.find_element(By.ID, "live").text == "live")
        logger.log_entry("growing", "appended while watching", logging.WARNING)
        logger.save_logs()
        _wait(
            driver,
            lambda d: "appended while watching" in _text(d, "#entries tbody"),
            timeout=2,
        )
        driver.get(served.url)
        _wait(driver, lambda d: "growing" in _rows(d))
        logger.start_session("brand-new")
        logger.save_logs()
        _wait(driver, lambda d: "brand-new" in _rows(d), timeout=2)
    _no_console_errors(driver)


def test_a_hostile_message_renders_as_text(
    driver: WebDriver, story: tuple[Served, Path, list[str]]
) -> None:
    """`<img src=x onerror=...>` shows as its text: no img element, no script ran; control
    characters show as visible escapes."""
    served, _, _ = story
    driver.get(served.url + "sessions/parent-1")
    _wait(driver, lambda d: HOSTILE in _text(d, "#entries tbody"))
    assert driver.find_elements(By.CSS_SELECTOR, "#entries img") == []
    assert driver.execute_script("return window.__xss") is None
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.accept()
    text = _text(driver, "#entries tbody")
    assert "line one\\u001b[31m\\u000dfake line" in text
    _shot(driver, "hostile-session")
    driver.get(served.url + "?q=" + "%3Cimg")
    _wait(driver, lambda d: _rows(d) == ["parent-1"])
    assert driver.execute_script("return window.__xss") is None
    _shot(driver, "hostile-search")
    _no_console_errors(driver)
