"""A job's secrets are not on its page: the DOM of the job page, with an instance's panel,
logs and environment open, holds none of their values (a plain env value, the control, is
there: the search can fail)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from tests.browser.pages import LogView, click_cell, page_ready, wait_text


def digest_check(name: str, value: str) -> str:
    digest = hashlib.sha256(value.encode()).hexdigest()
    return f'test "$(printf %s "${name}" | sha256sum | cut -d" " -f1)" = {digest}'


def page_text(browser: WebDriver) -> str:
    """Everything of the page: its markup (attributes, hidden parts) and its shown text."""
    html = browser.execute_script("return document.documentElement.outerHTML")
    shown = browser.execute_script("return document.body.innerText")
    return f"{html}\n{shown}"


def test_the_job_page_shows_no_secret(
    browser: WebDriver, logview: LogView, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_file, from_env = f"file-{uuid.uuid4().hex}", f"env-{uuid.uuid4().hex}"
    plain = f"plain-{uuid.uuid4().hex}"
    secret_file = tmp_path / "token"
    secret_file.write_text(from_file)
    monkeypatch.setenv("PAGE_TEST_API_TOKEN", from_env)  # the runtime's own environment
    job = logview.submit(
        {
            "name": "with secrets",
            "env": {"PLAIN": plain},
            "secrets": {"API_TOKEN": "env:PAGE_TEST_API_TOKEN"},
            "tasks": [
                {
                    "name": "uses",
                    "secrets": {"DB_PASSWORD": f"file:{secret_file}"},
                    "command": f"{digest_check('API_TOKEN', from_env)} && "
                    f"{digest_check('DB_PASSWORD', from_file)} && echo checked",
                }
            ],
        }
    )
    browser.get(logview.address(job))
    page_ready(browser)
    wait_text(browser, "#job-status", lambda t: t == "SUCCEEDED", "the job succeeds")
    click_cell(browser, "uses", 0)
    wait_text(browser, ".log-stdout pre.log", lambda t: t == "checked", "stdout")
    browser.find_element(By.CSS_SELECTOR, "details.more summary").click()
    wait_text(browser, "table.env", lambda t: plain in t, "the environment, plain env shown")
    everything = page_text(browser)
    assert plain in everything  # the control: what the page shows is searched
    assert from_file not in everything
    assert from_env not in everything
