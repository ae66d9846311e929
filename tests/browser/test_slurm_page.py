"""The job page of a job whose task runs on a Slurm compute env (the test cluster,
``scripts/slurm-cluster``): the task's row and cells, a running element's log, the reason of
an element waiting in Slurm's queue (as the page's snapshot has it: the page follows the
instances' states live, not their queue reasons), and a stop from the API, followed live.

Without ``$SLURM_CONF`` the test skips, except under ``CI=true`` where that fails.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.executors.slurm import SlurmExecutor, SlurmSettings
from aiobatch.layout import StateLayout
from aiobatch.states import JOB_TERMINAL
from tests.browser.pages import (
    WAIT_S,
    LogView,
    click_cell,
    hover_cell,
    page_ready,
    text,
    wait_for,
    wait_text,
)
from tests.integration.conftest import need_slurm

SETTINGS = SlurmSettings(partition="aiobatch", poll="0.3s")
CONFIG = Config(kill_grace="1s", compute_envs={"slurm": ComputeEnvConfig(kind="slurm", slots=8)})
PENDING_REASON = "slurm_pending: JobArrayTaskLimit"


@pytest.fixture
def slurm_view() -> Iterator[LogView]:
    """The log view of a Runtime whose only compute env is the test cluster."""
    need_slurm()
    root = Path(tempfile.mkdtemp(prefix="abslurm", dir="/tmp"))
    state = root / "state"
    state.mkdir()
    slurm = SlurmExecutor("slurm", SETTINGS, StateLayout(state).runtime_id)
    try:
        with start_blocking_portal(backend="asyncio") as portal:
            runtime = Runtime(
                state, config=CONFIG, executors={"slurm": slurm}, logview="127.0.0.1:0"
            )
            with portal.wrap_async_context_manager(runtime):
                assert runtime.logview_url is not None
                view = LogView(portal, runtime, runtime.logview_url, runtime.logview_token, root)
                try:
                    yield view
                finally:  # no Slurm element outlives the test
                    for summary in portal.call(runtime.list_jobs):
                        if summary.status not in JOB_TERMINAL:
                            portal.call(runtime.stop_job, summary.id)
                            portal.call(runtime.wait_job, summary.id)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def wait_reason(runtime: Runtime, job_id: str, task: str, index: int, reason: str) -> None:
    """Until the instance has this reason. Slurm's comes with the runtime's poll of squeue
    (first without a reason of its own, then with it): no event announces it."""
    deadline = anyio.current_time() + WAIT_S
    while (result := await runtime.instance_result(job_id, task, index)).reason != reason:
        assert anyio.current_time() < deadline, f"waited for {reason!r}: {result}"
        await anyio.sleep(0.1)


def instance_states(browser: WebDriver, task: str) -> list[str]:
    """Every instance's state as the page's grid holds it."""
    return list(
        browser.execute_script(
            "const t = window.aiobatch.model.tasks.get(arguments[0]);"
            "return t ? Array.from({length: t.total}, (_, i) => t.instance(i).status) : [];",
            task,
        )
    )


def legend(browser: WebDriver) -> dict[str, str]:
    """The legend's count of instances in each state, by state."""
    items = [e.text.split() for e in browser.find_elements(By.CSS_SELECTOR, ".legend-item")]
    return {item[0]: item[1] for item in items if len(item) == 2}


def test_slurm_task_on_the_job_page(browser: WebDriver, slurm_view: LogView) -> None:
    job = slurm_view.submit(
        {
            "name": "on slurm",
            "tasks": [
                {
                    "name": "t",
                    "compute_env": "slurm",
                    "instances": 2,
                    "max_parallel": 1,  # the array's %1: element 1 waits behind element 0
                    "command": 'echo "element $AIOBATCH_INSTANCE_INDEX runs"; exec sleep 300',
                }
            ],
        }
    )
    # The page shows an instance's reason as its snapshot had it: the page polls only the
    # tasks' reasons, so it is opened once the runtime knows Slurm's.
    slurm_view.portal.call(wait_reason, slurm_view.runtime, job.id, "t", 1, PENDING_REASON)
    browser.get(slurm_view.address(job))
    page_ready(browser, "live")
    browser.execute_script("window.sameDocument = true")
    wait_for(
        browser,
        lambda b: instance_states(b, "t") == ["RUNNING", "STAGING"],
        "element 0 runs, element 1 waits in Slurm's queue",
    )
    # The row's first count is what is under way: staging (here: in Slurm's queue) or running.
    wait_text(browser, '.task-row[data-task="t"] .num', lambda t: t == "2/0/2", "the row's counts")
    assert text(browser, '.task-row[data-task="t"] .status') == "RUNNING"
    shown = legend(browser)
    assert (shown["pending"], shown["staging"], shown["running"]) == ("0", "1", "1")

    click_cell(browser, "t", 0)
    wait_text(browser, "#panel-status", lambda t: t == "RUNNING", "element 0's panel")
    wait_text(browser, ".log-stdout pre.log", lambda t: t == "element 0 runs", "its line")

    hover_cell(browser, "t", 1)
    hover = wait_text(browser, ".tooltip", lambda t: t.startswith("t #1"), "element 1's tooltip")
    assert f"reason: {PENDING_REASON}" in hover and "STAGING" in hover
    click_cell(browser, "t", 1)
    wait_text(browser, "#panel-status", lambda t: t == "STAGING", "element 1's panel")
    assert text(browser, '#panel-facts dd[data-fact="reason"]') == PENDING_REASON

    slurm_view.portal.call(slurm_view.runtime.stop_job, job.id)
    wait_text(browser, "#job-status", lambda t: t == "CANCELLED", "the job cancelled")
    wait_text(browser, "#live", lambda t: t == "ended", "the stream's end")
    wait_text(browser, "#panel-status", lambda t: t == "CANCELLED", "element 1 cancelled")
    assert text(browser, '#panel-facts dd[data-fact="reason"]') == "stopped_by_user"
    assert instance_states(browser, "t") == ["CANCELLED", "CANCELLED"]
    assert browser.execute_script("return window.sameDocument") is True  # never reloaded
    assert slurm_view.status(job) == "CANCELLED"
