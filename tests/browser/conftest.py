"""Browser tests of the log view: Debian's chromium, driven by selenium, against a real Runtime.

The runtime (``Runtime(logview="127.0.0.1:0")``) runs in a thread of its own, an anyio
blocking portal, so that the tests' selenium calls, which block, run in the test's thread.
Chromium and chromedriver come from Debian (``scripts/browser-setup`` installs them);
nothing downloads a browser: the driver's path is given, so Selenium Manager never runs.
Without them the tests skip, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from anyio.from_thread import start_blocking_portal
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.states import JOB_TERMINAL
from tests.browser.pages import HEIGHT, WIDTH, LogView

CHROMIUM = Path(os.environ.get("AIOBATCH_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("AIOBATCH_CHROMEDRIVER", "/usr/bin/chromedriver"))

# Installed in every page before its own scripts: counts what the page's CSP refused (an
# injected inline handler or script would show up here even though the CSP stops it).
WATCH_PAGE = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(e.violatedDirective + " " + e.blockedURI);
});
"""


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def driver() -> Iterator[WebDriver]:
    """One headless chromium for the session (its cookies are cleared for every test)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        unavailable(f"{', '.join(missing)} missing: run scripts/browser-setup (as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespaces for the sandbox
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--password-store=basic",
        f"--window-size={WIDTH},{HEIGHT}",
    ):
        options.add_argument(arg)
    profile = tempfile.mkdtemp(prefix="aiobatch-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(executable_path=str(CHROMEDRIVER))
    browser = webdriver.Chrome(service=service, options=options)
    try:
        # The viewport itself is 1280x800 (the window size includes no browser chrome only
        # in some versions of headless mode).
        browser.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_PAGE})
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(driver: WebDriver) -> WebDriver:
    """The session's browser on a blank page, with no cookies (so no token) left over."""
    driver.get("about:blank")
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    return driver


@pytest.fixture
def logview() -> Iterator[LogView]:
    # A short path of its own: FIFOs and state, away from pytest's long tmp_path.
    root = Path(tempfile.mkdtemp(prefix="abui", dir="/tmp"))
    config = Config(
        kill_grace="1s", compute_envs={"local": ComputeEnvConfig(kind="local", slots=8)}
    )
    try:
        with start_blocking_portal(backend="asyncio") as portal:
            runtime = Runtime(root / "state", config=config, logview="127.0.0.1:0")
            with portal.wrap_async_context_manager(runtime):
                assert runtime.logview_url is not None
                view = LogView(portal, runtime, runtime.logview_url, runtime.logview_token, root)
                try:
                    yield view
                finally:
                    for summary in portal.call(runtime.list_jobs):
                        if summary.status not in JOB_TERMINAL:
                            portal.call(runtime.stop_job, summary.id)
    finally:
        shutil.rmtree(root, ignore_errors=True)
