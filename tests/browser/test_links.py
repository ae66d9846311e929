"""A log-view link in a real browser: its job's page and live logs, and nothing more.

Its cookie drives no action (no button, and a POST with a forged CSRF header gets 403),
shows no other job, ends with its hours (401 and a page saying so), and dies with the key.
"""

from __future__ import annotations

import time

from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from aiobatch.links import LinkKeys
from tests.browser.pages import LogView, click_cell, page_ready, release, wait_for, wait_text

POST = (
    "const done = arguments[arguments.length - 1];"
    "fetch(arguments[0], {method: 'POST', credentials: 'same-origin',"
    " headers: {'X-Aiobatch-CSRF': arguments[1]}}).then((r) => done(r.status));"
)
GET = (
    "const done = arguments[arguments.length - 1];"
    "fetch(arguments[0], {credentials: 'same-origin'}).then((r) => done(r.status));"
)


def shown(browser: WebDriver, css: str) -> list[str]:
    return [
        str(e.get_attribute("id"))
        for e in browser.find_elements(By.CSS_SELECTOR, css)
        if e.is_displayed()
    ]


def test_a_link_shows_its_job_read_only(browser: WebDriver, logview: LogView) -> None:
    gates = logview.gates("talk", 1)
    job = logview.submit(
        {
            "name": "shared",
            "tasks": [{"name": "talk", "command": f"echo 'first line'; {gates.command}"}],
        }
    )
    other = logview.submit({"name": "private", "tasks": [{"name": "t", "command": "true"}]})
    address = logview.address(job, hours=1)
    assert logview.token not in address
    browser.get(address)
    page_ready(browser, "live")
    assert "link=" not in browser.current_url  # kept in a cookie, dropped from the address
    wait_text(browser, "#job-name", lambda t: t == "shared", "the job's page")
    click_cell(browser, "talk", 0)
    wait_text(browser, ".log-stdout pre.log", lambda t: t == "first line", "its live log")

    # No action is offered: the session's scope is read.
    wait_for(browser, lambda b: b.execute_script("return document.readyState") == "complete")
    assert shown(browser, ".actions button") == []
    assert shown(browser, "#stop-instance") == []
    assert shown(browser, "#crumb-jobs") == []
    # ... and none is taken, whatever the page sends (a forged CSRF header included).
    csrf = "forged"
    for action in ("stop", "suspend", "resume", "retry"):
        path = f"/v1/jobs/{job.id}/{action}"
        assert browser.execute_async_script(POST, path, csrf) == 403, action
    path = f"/v1/jobs/{job.id}/tasks/talk/instances/0/stop"
    assert browser.execute_async_script(POST, path, csrf) == 403
    assert browser.execute_async_script(POST, "/v1/jobs", csrf) == 403
    assert logview.status(job) == "RUNNING"
    for path in ("/v1/jobs", "/v1/events", f"/v1/jobs/{other.id}", f"/v1/jobs/{job.id}/logview"):
        assert browser.execute_async_script(GET, path) == 403, path

    # Another job's page with the same cookie: refused, its name nowhere.
    browser.get(f"{logview.base}/ui/jobs/{other.id}")
    assert "private" not in browser.page_source
    assert "Forbidden" in browser.find_element(By.TAG_NAME, "body").text
    release(gates, 0)


def test_an_expired_link_shows_a_page_that_says_so(browser: WebDriver, logview: LogView) -> None:
    job = logview.submit({"name": "old", "tasks": [{"name": "t", "command": "true"}]})
    keys = LinkKeys(logview.runtime.state_dir)  # the runtime's key, to sign in the past
    keys.open()
    expired = keys.issue(job.id, 1, now=time.time() - 2 * 3600)
    browser.get(f"{logview.base}/ui/jobs/{job.id}?link={expired}")
    assert "This link has expired" in browser.find_element(By.TAG_NAME, "h1").text
    assert "old" not in browser.find_element(By.TAG_NAME, "body").text
    status = browser.execute_async_script(GET, f"/v1/jobs/{job.id}")
    assert status == 401


def test_rotating_the_key_revokes_the_link(browser: WebDriver, logview: LogView) -> None:
    job = logview.submit({"name": "rotation", "tasks": [{"name": "t", "command": "true"}]})
    browser.get(logview.address(job))
    page_ready(browser)
    wait_text(browser, "#job-name", lambda t: t == "rotation", "the job's page")
    assert browser.execute_async_script(GET, f"/v1/jobs/{job.id}") == 200
    logview.runtime.link_keys.rotate()
    assert browser.execute_async_script(GET, f"/v1/jobs/{job.id}") == 401
    browser.get(f"{logview.base}/ui/jobs/{job.id}")
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "revoked" in body and "Unauthorized" in body and "rotation" not in body
