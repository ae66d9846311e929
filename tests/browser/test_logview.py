"""The log view in a real browser: a Runtime serves it, headless chromium opens it.

Instances are held at gates (FIFOs) so that a page can be looked at while its job runs;
every wait is on a DOM condition.
"""

from __future__ import annotations

import re
import struct
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.select import Select

from tests.browser.pages import (
    HEIGHT,
    SCREENSHOT,
    WIDTH,
    LogView,
    click_cell,
    hover_cell,
    page_ready,
    release,
    text,
    wait_for,
    wait_text,
)

HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_LOG = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'
HOSTILE_ENV = '<svg onload="window.pwned=1"></svg>'


def task_counts(browser: WebDriver, task: str) -> str:
    return text(browser, f'.task-row[data-task="{task}"] .num')


def job_row_ids(browser: WebDriver) -> list[str]:
    rows = browser.find_elements(By.CSS_SELECTOR, "#job-rows tr")
    return [str(row.get_attribute("data-job")) for row in rows]


def assert_nothing_ran(browser: WebDriver) -> None:
    """No alert, no flag set by injected code, no element made from data, no CSP refusal."""
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - raises if no alert is open
    assert browser.execute_script("return typeof window.pwned") == "undefined"
    assert browser.execute_script("return document.querySelectorAll('img, svg svg').length") == 0
    inline = "return document.querySelectorAll('script:not([src]), [onerror], [onload]').length"
    assert browser.execute_script(inline) == 0
    assert browser.execute_script("return window.__cspViolations") == []


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def test_progress_changes_without_reload(browser: WebDriver, logview: LogView) -> None:
    gates = logview.gates("work", 3)
    job = logview.submit(
        {
            "name": "live progress",
            "tasks": [
                {"name": "prepare", "command": "echo ready"},
                {
                    "name": "work",
                    "depends_on": ["prepare"],
                    "instances": 3,
                    "command": gates.command,
                },
            ],
        }
    )
    browser.get(logview.address(job))
    page_ready(browser, "live")
    assert "token=" not in browser.current_url  # kept in a cookie, dropped from the address
    browser.execute_script("window.sameDocument = true")

    wait_text(
        browser, "#job-progress", lambda t: t.startswith("3/1/4"), "3 running, prepare terminated"
    )
    assert task_counts(browser, "work") == "3/0/3"
    release(gates, 0)
    wait_text(browser, "#job-progress", lambda t: t.startswith("2/2/4"), "one released")
    wait_for(browser, lambda b: task_counts(b, "work") == "2/1/3", "work 2/1/3")
    release(gates, 1)
    release(gates, 2)
    wait_text(browser, "#job-status", lambda t: t == "SUCCEEDED", "the job's end")
    wait_for(
        browser,
        lambda b: (
            "state-SUCCEEDED"
            in str(
                b.find_element(By.CSS_SELECTOR, 'g.node[data-task="work"]').get_attribute("class")
            )
        ),
        "the DAG's work node turns SUCCEEDED",
    )
    assert browser.execute_script("return window.sameDocument") is True  # never reloaded
    states = browser.execute_script(
        "return Array.from(window.aiobatch.model.tasks.get('work').states)"
    )
    assert states == [4, 4, 4]  # SUCCEEDED in the grid's model
    assert logview.status(job) == "SUCCEEDED"


def test_failed_instance_shows_reason_and_log(browser: WebDriver, logview: LogView) -> None:
    job = logview.submit(
        {
            "name": "one fails",
            "tasks": [
                {
                    "name": "check",
                    "instances": 3,
                    "on_failure": "continue",
                    "command": 'echo "out line of $AIOBATCH_INSTANCE_INDEX"; '
                    'if [ "$AIOBATCH_INSTANCE_INDEX" = 1 ]; then '
                    'echo "bad input in part 1" >&2; exit 3; fi',
                }
            ],
        }
    )
    browser.get(logview.address(job))
    page_ready(browser)
    wait_text(browser, "#job-status", lambda t: t == "FAILED", "the job fails")

    hover_cell(browser, "check", 1)
    hover = wait_text(browser, ".tooltip", lambda t: "exit code: 3" in t, "the cell's tooltip")
    assert hover.startswith("check #1") and "reason: exit_code: 3" in hover
    click_cell(browser, "check", 1)
    wait_text(browser, "#panel-title", lambda t: t == "check #1", "the instance panel")
    assert text(browser, '#panel-facts dd[data-fact="reason"]') == "exit_code: 3"
    assert text(browser, '#panel-facts dd[data-fact="exit_code"]') == "3"
    # What the attempt cost, from the process's rusage: its shell's peak memory, its CPU.
    peak = text(browser, '#panel-facts dd[data-fact="peak_memory"]')
    assert re.fullmatch(r"\d+\.\d (KiB|MiB)", peak), peak
    assert re.fullmatch(r"\d+\.\d\d s", text(browser, '#panel-facts dd[data-fact="cpu"]'))
    wait_text(browser, ".log-stdout pre.log", lambda t: t == "out line of 1", "stdout")
    wait_text(browser, ".log-stderr pre.log", lambda t: t == "bad input in part 1", "stderr")
    attempts = wait_text(browser, "table.attempts tbody", lambda t: "FAILED" in t, "attempts")
    assert "exit_code: 3" in attempts

    link = browser.find_element(By.CSS_SELECTOR, ".log-stdout a.download")
    href = str(link.get_attribute("href"))
    assert href.endswith(f"/v1/jobs/{job.id}/tasks/check/instances/1/logs/stdout")
    assert link.get_attribute("download") == "check.1.stdout"
    full = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {credentials: 'same-origin'}).then((r) => r.text()).then(done);",
        href,
    )
    assert full == "out line of 1\n"


def test_log_grows_while_the_instance_runs(browser: WebDriver, logview: LogView) -> None:
    gates = logview.gates("talk", 1)
    job = logview.submit(
        {
            "name": "talker",
            "tasks": [
                {
                    "name": "talk",
                    "command": f"echo 'first line'; {gates.command}; echo 'second line'",
                }
            ],
        }
    )
    browser.get(logview.address(job))
    page_ready(browser, "live")
    wait_for(browser, lambda b: task_counts(b, "talk") == "1/0/1", "talk running")
    click_cell(browser, "talk", 0)
    wait_text(browser, ".log-stdout pre.log", lambda t: t == "first line", "the first line")
    release(gates, 0)
    wait_text(
        browser, ".log-stdout pre.log", lambda t: t == "first line\nsecond line", "the second line"
    )
    wait_text(browser, "#panel-status", lambda t: t == "SUCCEEDED", "the instance's end")


def test_job_and_instance_actions_from_the_page(browser: WebDriver, logview: LogView) -> None:
    """Suspend, resume, stop an instance, stop the job, retry it: buttons, then the states."""
    gates = logview.gates("hold", 3)
    job = logview.submit(
        {
            "name": "to be stopped",
            "tasks": [
                {"name": "hold", "instances": 3, "command": gates.command},
                {"name": "after", "depends_on": ["hold"], "command": "true"},
            ],
        }
    )
    browser.get(logview.admin_address(job))
    page_ready(browser, "live")
    wait_text(browser, "#job-progress", lambda t: t.startswith("3/0/4"), "all holding")

    # A POST without the CSRF header is refused, even with the cookie.
    refused = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(arguments[0], {method: 'POST', credentials: 'same-origin'})"
        ".then((r) => done(r.status));",
        f"/v1/jobs/{job.id}/stop",
    )
    assert refused == 403
    assert logview.status(job) == "RUNNING"

    browser.find_element(By.ID, "btn-suspend").click()
    wait_text(browser, "#job-status", lambda t: t == "SUSPENDED", "SUSPENDED")
    assert logview.status(job) == "SUSPENDED"
    browser.find_element(By.ID, "btn-resume").click()
    wait_text(browser, "#job-status", lambda t: t == "RUNNING", "RUNNING again")

    click_cell(browser, "hold", 2)
    wait_text(browser, "#panel-status", lambda t: t == "RUNNING", "the instance's panel")
    browser.find_element(By.ID, "stop-instance").click()
    wait_text(browser, "#panel-status", lambda t: t == "CANCELLED", "the instance stopped")
    assert text(browser, '#panel-facts dd[data-fact="reason"]') == "stopped_by_user"
    browser.find_element(By.CSS_SELECTOR, "#panel button.close").click()

    stop = browser.find_element(By.ID, "btn-stop")
    stop.click()
    wait_text(browser, "#btn-stop", lambda t: t == "Really stop?", "the confirmation")
    stop.click()
    wait_text(browser, "#job-status", lambda t: t == "CANCELLED", "CANCELLED")
    assert logview.status(job) == "CANCELLED"
    wait_text(browser, "#live", lambda t: t == "ended", "the stream's end")
    assert browser.find_element(By.ID, "btn-stop").is_enabled() is False
    assert text(browser, '.task-row[data-task="after"] .status') == "SKIPPED"

    # Retry: the page follows the job again; what did not succeed runs again.
    browser.find_element(By.ID, "btn-retry").click()
    wait_text(browser, "#job-status", lambda t: t == "RUNNING", "RUNNING after the retry")
    wait_text(browser, "#live", lambda t: t == "live", "following again")
    for index in range(3):
        release(gates, index)
    wait_text(browser, "#job-status", lambda t: t == "SUCCEEDED", "SUCCEEDED after the retry")
    assert text(browser, "#job-progress").startswith("0/4/4")


def test_user_strings_are_shown_as_text(browser: WebDriver, logview: LogView) -> None:
    # Task names are validated ([A-Za-z0-9_.-]); the job's name, env values and logs are not.
    job = logview.submit(
        {
            "name": HOSTILE_NAME,
            "env": {"NOTE": HOSTILE_ENV},
            "tasks": [
                {
                    "name": "xss",
                    "env": {"PAYLOAD": HOSTILE_LOG},
                    "command": 'printf "%s\\n" "$PAYLOAD"; printf "%s\\n" "$PAYLOAD" >&2; exit 1',
                }
            ],
        }
    )
    browser.get(logview.admin_address(job))  # signed in: the list of jobs below too
    page_ready(browser)
    wait_text(browser, "#job-status", lambda t: t == "FAILED", "the job fails")
    assert text(browser, "#job-name") == HOSTILE_NAME
    assert browser.title == f"{HOSTILE_NAME} · aiobatch"

    click_cell(browser, "xss", 0)
    wait_text(browser, ".log-stdout pre.log", lambda t: t == HOSTILE_LOG, "stdout, literally")
    wait_text(browser, ".log-stderr pre.log", lambda t: t == HOSTILE_LOG, "stderr, literally")
    browser.find_element(By.CSS_SELECTOR, "details.more summary").click()
    env = wait_text(browser, "table.env", lambda t: "NOTE" in t, "the environment")
    assert HOSTILE_ENV in env and HOSTILE_LOG in env
    assert_nothing_ran(browser)

    browser.get(f"{logview.base}/ui/jobs")  # signed in: the cookie is enough
    name = wait_text(browser, f'tr[data-job="{job.id}"] .job-name', bool, "the job's row")
    assert name == HOSTILE_NAME
    assert_nothing_ran(browser)


def test_without_the_token_there_is_nothing(browser: WebDriver, logview: LogView) -> None:
    job = logview.submit({"name": "secret-name", "tasks": [{"name": "t", "command": "true"}]})
    address = logview.address(job)
    page = address.split("?")[0]
    base = logview.base
    for url in (
        page,
        f"{page}?token=not-the-token",
        f"{base}/ui/jobs",
        f"{base}/v1/jobs",
        f"{base}/v1/jobs/{job.id}",
        f"{base}/v1/jobs/{job.id}/definition",
        f"{base}/v1/events?job={job.id}",
    ):
        status, body = http_get(url)
        assert status == 401, url
        assert "secret-name" not in body and job.id not in body, url

    browser.get(page)
    assert "secret-name" not in browser.page_source
    assert "Unauthorized" in browser.find_element(By.TAG_NAME, "body").text
    assert browser.get_cookies() == []

    browser.get(address)  # the same page with its link
    wait_text(browser, "#job-name", lambda t: t == "secret-name", "the job's page")
    browser.get(address)  # and again, signed in already (the address as printed, clicked twice)
    wait_text(browser, "#job-name", lambda t: t == "secret-name", "the job's page again")
    assert "token=" not in browser.current_url and "link=" not in browser.current_url


def test_jobs_page_lists_filters_pages_and_follows(browser: WebDriver, logview: LogView) -> None:
    quick = [
        logview.submit({"name": f"quick {n}", "tasks": [{"name": "t", "command": "true"}]})
        for n in range(50)
    ]
    gates = logview.gates("slow", 1)
    slow = logview.submit({"name": "slow one", "tasks": [{"name": "t", "command": gates.command}]})
    browser.get(logview.jobs_address())
    wait_text(browser, f'tr[data-job="{slow.id}"] .badge', lambda t: t == "RUNNING", "slow runs")
    ids = job_row_ids(browser)
    assert len(ids) == 50 and ids[0] == slow.id  # newest first, a page of 50
    older = browser.find_element(By.ID, "next")
    assert older.is_enabled()
    older.click()
    wait_for(browser, lambda b: job_row_ids(b) == [quick[0].id], "the second page")
    assert "offset=50" in browser.current_url
    browser.find_element(By.ID, "prev").click()
    wait_for(browser, lambda b: len(job_row_ids(b)) == 50, "back to the first page")

    Select(browser.find_element(By.ID, "status-filter")).select_by_visible_text("RUNNING")
    wait_for(browser, lambda b: job_row_ids(b) == [slow.id], "only the running job")
    Select(browser.find_element(By.ID, "status-filter")).select_by_visible_text("all")
    wait_for(browser, lambda b: len(job_row_ids(b)) == 50, "every job again")

    browser.execute_script("window.sameDocument = true")
    release(gates, 0)
    wait_text(browser, f'tr[data-job="{slow.id}"] .badge', lambda t: t == "SUCCEEDED", "live")
    wait_text(browser, f'tr[data-job="{slow.id}"] td.num', lambda t: t == "1/1", "its progress")
    assert browser.execute_script("return window.sameDocument") is True

    browser.find_element(By.CSS_SELECTOR, f'tr[data-job="{slow.id}"] .job-name a').click()
    wait_text(browser, "#job-name", lambda t: t == "slow one", "the job's own page")


def test_jobs_page_filters_by_labels_and_shows_them_as_text(
    browser: WebDriver, logview: LogView
) -> None:
    def labelled(name: str, **labels: str) -> str:
        spec = {"name": name, "tasks": [{"name": "t", "command": "true"}], "labels": labels}
        return logview.submit(spec).id

    ml = labelled("ml", team="ml", note=HOSTILE_ENV)
    web = labelled("web", team="web", sizes="s,m")
    plain = labelled("plain")
    browser.get(logview.jobs_address())
    wait_for(browser, lambda b: job_row_ids(b) == [plain, web, ml], "every job")
    shown = wait_text(browser, f'tr[data-job="{ml}"] .labels', bool, "the job's labels")
    assert shown == f"note={HOSTILE_ENV} team=ml"  # sorted by key, literally
    assert text(browser, f'tr[data-job="{plain}"] .labels') == ""
    assert_nothing_ran(browser)

    field = browser.find_element(By.ID, "label-filter")
    field.send_keys("team=ml" + Keys.ENTER)
    wait_for(browser, lambda b: job_row_ids(b) == [ml], "only the job labelled team=ml")
    assert "label=team%3Dml" in browser.current_url
    field.clear()
    field.send_keys("team=ml, note=other" + Keys.ENTER)  # every label must match
    wait_text(browser, "#empty", lambda t: t == "No jobs with these labels.", "none has both")
    field.clear()
    field.send_keys("sizes=s,m, team=web" + Keys.ENTER)  # a comma inside a value stays in it
    wait_for(browser, lambda b: job_row_ids(b) == [web], "the job labelled sizes=s,m")
    field.clear()
    field.send_keys("team" + Keys.ENTER)
    wait_text(browser, "#notice", lambda t: "expected KEY=VALUE" in t, "the malformed filter")
    field.clear()
    field.send_keys(Keys.ENTER)
    field.send_keys(Keys.TAB)  # a change event for the emptied field
    wait_for(browser, lambda b: job_row_ids(b) == [plain, web, ml], "every job again")


def test_screenshot_of_a_running_job(browser: WebDriver, logview: LogView) -> None:
    """The picture in the README: a job midway, one instance failed, others running."""
    gates = logview.gates("render", 24)
    job = logview.submit(
        {
            "name": "frames",
            "tasks": [
                {"name": "split", "command": "echo splitting; seq 0 23 > parts.txt"},
                {
                    "name": "render",
                    "depends_on": ["split"],
                    "instances": 24,
                    "max_parallel": 6,
                    "on_failure": "continue",
                    "command": 'i=$AIOBATCH_INSTANCE_INDEX; echo "frame $i"; '
                    '[ "$i" -lt 10 ] && exit 0; '
                    '[ "$i" = 10 ] && { echo "frame 10: corrupt input" >&2; exit 3; }; '
                    + gates.command,
                },
                {"name": "thumbs", "depends_on": ["split"], "instances": 8, "command": "true"},
                {"name": "merge", "depends_on": ["render"], "command": "echo merging"},
                {"name": "publish", "depends_on": ["merge", "thumbs"], "command": "true"},
            ],
        }
    )
    browser.get(logview.address(job))
    page_ready(browser, "live")
    wait_for(browser, lambda b: task_counts(b, "render") == "6/11/24", "render midway")
    wait_for(browser, lambda b: task_counts(b, "thumbs") == "0/8/8", "thumbs done")
    wait_for(
        browser,
        lambda b: b.execute_script("return !window.aiobatch.timeline.empty"),
        "the timeline's bars",
    )
    SCREENSHOT.parent.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOT))
    assert png_size(SCREENSHOT) == (WIDTH, HEIGHT)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_a_big_log_is_followed_from_near_its_end(browser: WebDriver, logview: LogView) -> None:
    job = logview.submit({"name": "chatty", "tasks": [{"name": "say", "command": "seq 300000"}]})
    logview.portal.call(job.wait_for_completion)
    size = len("".join(f"{n}\n" for n in range(1, 300_001)))
    browser.get(logview.address(job))
    page_ready(browser)
    click_cell(browser, "say", 0)
    shown = wait_text(browser, ".log-stdout pre.log", lambda t: t.endswith("300000"), "the end")
    follows = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name)"
        ".filter((name) => name.includes('/logs/stdout?follow=1'))"
    )
    keep = 256 * 1024  # LOG_KEEP in panel.js
    assert [url.rsplit("offset=", 1)[1] for url in follows] == [str(size - keep)]
    assert int(shown.split("\n", 1)[0]) > 250_000
    note = browser.find_element(By.CSS_SELECTOR, ".log-stdout p.muted")
    assert note.is_displayed() and "download the full log" in note.text
