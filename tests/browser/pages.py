"""Helpers of the browser tests: the runtime under test, gates, waiting on the page."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from anyio.from_thread import BlockingPortal
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.wait import WebDriverWait

from aiobatch import Runtime
from aiobatch.api import JobHandle
from tests.helpers import Gates

T = TypeVar("T")

# The README shows the screenshot a test run takes of a job page.
SCREENSHOT = Path(__file__).parents[2] / "docs" / "logview.png"
WIDTH, HEIGHT = 1280, 800
WAIT_S = 15.0  # a safety limit for DOM conditions, not synchronisation


@dataclass
class LogView:
    """A Runtime serving the log view on loopback, driven from the test's thread."""

    portal: BlockingPortal
    runtime: Runtime
    base: str
    token: str
    root: Path

    def submit(self, spec: Mapping[str, Any]) -> JobHandle:
        return self.portal.call(self.runtime.submit, dict(spec))

    def address(self, job: JobHandle, hours: float = 24) -> str:
        """The job's log-view link, as ``get_logview_address`` gives it: read-only."""
        url = self.portal.call(job.get_logview_address, hours)
        assert url is not None, "the runtime serves no log view"
        return url

    def admin_address(self, job: JobHandle) -> str:
        """The job's page with the log view's own token, as its owner may type it: a session
        that may act (stop, suspend, ...)."""
        return f"{self.base}/ui/jobs/{quote(job.id, safe='')}?token={quote(self.token)}"

    def jobs_address(self) -> str:
        return f"{self.base}/ui/jobs?token={quote(self.token)}"

    def status(self, job: JobHandle) -> str:
        return str(self.portal.call(job.get_state).value)

    def gates(self, name: str, count: int) -> Gates:
        return Gates(self.root / name, count)


def release(gates: Gates, index: int, timeout: float = WAIT_S) -> None:
    """Let instance ``index`` through its gate (once it waits there), from a plain thread."""
    path = gates.root / str(index)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            # ENXIO: nobody has the FIFO open for reading yet; the instance is on its way.
            if exc.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        try:
            os.write(fd, b"go\n")
        finally:
            os.close(fd)
        return


def wait_for(browser: WebDriver, condition: Callable[[WebDriver], T], message: str = "") -> T:
    """Wait until ``condition`` returns something truthy; fail with ``message`` after WAIT_S."""
    # A live page redraws: an element read a moment ago may be gone; look again.
    return WebDriverWait(
        browser, WAIT_S, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    ).until(condition, message)


def text(browser: WebDriver, css: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, css).text)


def wait_text(browser: WebDriver, css: str, predicate: Callable[[str], bool], what: str) -> str:
    """Wait until the text of the element at ``css`` satisfies ``predicate``; returns it."""
    seen: list[str] = []

    def check(b: WebDriver) -> bool:
        elements = b.find_elements(By.CSS_SELECTOR, css)
        seen.append(str(elements[0].text) if elements else "")
        return predicate(seen[-1])

    try:
        wait_for(browser, check)
    except TimeoutException:
        raise AssertionError(f"{css}: waited for {what}; last text {seen[-1:]!r}") from None
    return seen[-1]


def page_ready(browser: WebDriver, *states: str) -> None:
    """Wait until the job page has loaded and follows the job (or has seen it end)."""
    wanted = states or ("live", "ended")
    wait_for(
        browser,
        lambda b: b.execute_script("return document.body && document.body.dataset.state") in wanted,
        f"page state in {wanted}",
    )


def hover_cell(browser: WebDriver, task: str, index: int) -> None:
    """Move the pointer onto an instance's cell of the grid's canvas."""
    canvas: WebElement = browser.find_element(By.CSS_SELECTOR, "#grid canvas")
    browser.execute_script(
        "window.aiobatch.grid.reveal(arguments[1], arguments[2]);"
        "arguments[0].scrollIntoView({block: 'center'});",
        canvas,
        task,
        index,
    )
    centre = browser.execute_script(
        "return window.aiobatch.grid.cellCentre(arguments[0], arguments[1])", task, index
    )
    assert centre is not None, f"no cell for {task} #{index}"
    size = canvas.size
    dx = round(centre["x"] - size["width"] / 2)
    dy = round(centre["y"] - size["height"] / 2)
    webdriver.ActionChains(browser).move_to_element_with_offset(canvas, dx, dy).perform()


def click_cell(browser: WebDriver, task: str, index: int) -> None:
    """Click an instance's cell on the grid's canvas, where a person would."""
    hover_cell(browser, task, index)
    webdriver.ActionChains(browser).click().perform()
