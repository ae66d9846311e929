"""The job page of a job whose task runs on a Slurm compute env (the test cluster,
``scripts/slurm-cluster``): the task's row and cells, a running element's log, the reason of
an element waiting in Slurm's queue, shown live (the page's poll brings it: no event does)
in the open panel and in the tooltip under the pointer, and a stop from the API, followed
live. And, on a model of the page's own, how the poll's queue reasons meet the events'.

Without ``$SLURM_CONF`` the Slurm test skips, except under ``CI=true`` where that fails.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
    LogView,
    click_cell,
    hover_cell,
    page_ready,
    release,
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


def instance_reasons(browser: WebDriver, task: str) -> list[str | None]:
    """Every instance's reason as the page's model holds it."""
    return list(
        browser.execute_script(
            "const t = window.aiobatch.model.tasks.get(arguments[0]);"
            "return t ? Array.from(t.reasons) : [];",
            task,
        )
    )


def test_slurm_task_on_the_job_page(browser: WebDriver, slurm_view: LogView) -> None:
    gate = slurm_view.gates("gate", 1)
    job = slurm_view.submit(
        {
            "name": "on slurm",
            "tasks": [
                # Holds "t" back until the page has loaded: whatever Slurm says of t's
                # elements comes after the page's snapshot.
                {"name": "gate", "compute_env": "slurm", "command": gate.command},
                {
                    "name": "t",
                    "compute_env": "slurm",
                    "depends_on": ["gate"],
                    "instances": 2,
                    "max_parallel": 1,  # the array's %1: element 1 waits behind element 0
                    "command": 'echo "element $AIOBATCH_INSTANCE_INDEX runs"; exec sleep 300',
                },
            ],
        }
    )
    browser.get(slurm_view.address(job))
    page_ready(browser, "live")
    browser.execute_script("window.sameDocument = true")
    wait_for(browser, lambda b: instance_states(b, "gate") == ["RUNNING"], "the gate runs")
    assert instance_states(browser, "t") == ["PENDING"] * 2
    assert not any(r and r.startswith("slurm_pending") for r in instance_reasons(browser, "t"))

    # Element 1's panel open and the pointer resting on it (again: the panel moved the grid),
    # before Slurm has it.
    click_cell(browser, "t", 1)
    wait_text(browser, "#panel-status", lambda t: t == "PENDING", "element 1's panel")
    hover_cell(browser, "t", 1)
    wait_text(browser, ".tooltip", lambda t: t.startswith("t #1  PENDING"), "element 1's tooltip")
    release(gate, 0)
    wait_for(
        browser,
        lambda b: instance_states(b, "t") == ["RUNNING", "STAGING"],
        "element 0 runs, element 1 waits in Slurm's queue",
    )
    # Slurm's reason comes with the page's poll, to the panel and the tooltip as they are.
    wait_text(
        browser,
        '#panel-facts dd[data-fact="reason"]',
        lambda t: t == PENDING_REASON,
        "element 1's queue reason in its open panel",
    )
    wait_text(
        browser,
        ".tooltip",
        lambda t: t.startswith("t #1  STAGING") and f"reason: {PENDING_REASON}" in t,
        "element 1's queue reason in the tooltip under the pointer",
    )
    # The row's first count is what is under way: staging (here: in Slurm's queue) or running.
    wait_text(browser, '.task-row[data-task="t"] .num', lambda t: t == "2/0/2", "the row's counts")
    assert text(browser, '.task-row[data-task="t"] .status') == "RUNNING"
    shown = legend(browser)
    assert (shown["pending"], shown["staging"], shown["running"]) == ("0", "1", "1")
    assert shown["succeeded"] == "1"  # the gate

    click_cell(browser, "t", 0)
    wait_text(browser, "#panel-status", lambda t: t == "RUNNING", "element 0's panel")
    wait_text(browser, ".log-stdout pre.log", lambda t: t == "element 0 runs", "its line")

    click_cell(browser, "t", 1)  # back, with what the model holds: the same
    wait_text(browser, "#panel-status", lambda t: t == "STAGING", "element 1's panel")
    assert text(browser, '#panel-facts dd[data-fact="reason"]') == PENDING_REASON
    hover = wait_text(browser, ".tooltip", lambda t: t.startswith("t #1"), "element 1's tooltip")
    assert f"reason: {PENDING_REASON}" in hover and "STAGING" in hover

    slurm_view.portal.call(slurm_view.runtime.stop_job, job.id)
    wait_text(browser, "#job-status", lambda t: t == "CANCELLED", "the job cancelled")
    wait_text(browser, "#live", lambda t: t == "ended", "the stream's end")
    wait_text(browser, "#panel-status", lambda t: t == "CANCELLED", "element 1 cancelled")
    assert text(browser, '#panel-facts dd[data-fact="reason"]') == "stopped_by_user"
    wait_text(
        browser,
        ".tooltip",
        lambda t: t.startswith("t #1  CANCELLED") and "reason: stopped_by_user" in t,
        "element 1's tooltip after the stop",
    )
    assert instance_states(browser, "t") == ["CANCELLED"] * 2
    assert instance_reasons(browser, "t")[1] == "stopped_by_user"
    assert browser.execute_script("return window.sameDocument") is True  # never reloaded
    assert slurm_view.status(job) == "CANCELLED"


# Runs in the page: a JobModel of its own, given snapshots, polls and events as the server
# sends them; returns what it showed after each step.
QUEUED_IN_THE_MODEL = """
const done = arguments[arguments.length - 1];
import("/ui/static/model.js").then(({ JobModel }) => {
  let ts = 0;
  const snap = (total, queued, instances) => ({
    id: "j", name: "q", status: "RUNNING", reason: null,
    tasks: { t: { status: "RUNNING", reason: null, total, queued, instances } },
  });
  const event = (index, state, reason, more = {}) => ({
    type: "InstanceStateChanged", job_id: "j", task: "t", index, state, attempt: 1, reason,
    ts: ++ts, ...more,
  });
  const seen = {};
  const m = new JobModel("j");
  m.applySnapshot(snap(5, { 1: "slurm_pending: Priority" }, [
    { index: 0, status: "RUNNING", attempts: 1 },
    { index: 1, status: "STAGING", attempts: 1, reason: "slurm_pending: Priority" },
    { index: 2, status: "STAGING", attempts: 1 },
    { index: 3, status: "STAGING", attempts: 1, reason: "from an event" },
    { index: 4, status: "PENDING", attempts: 0, reason: "max_parallel" },
  ]));
  const t = m.tasks.get("t");
  const reasons = () => Array.from(t.reasons);
  seen.snapshot = reasons();
  m.takeDirty();
  m.applyTaskReasons(snap(5, {
    0: "q", 1: "slurm_pending: JobArrayTaskLimit", 2: "slurm_pending", 3: "q", 4: "q",
    7: "out of range", x: "no index",
  }), ts);
  let dirty = m.takeDirty();
  seen.polled = reasons();
  seen.touched = [...(dirty.cells.get("t") || [])].sort();
  seen.panel = dirty.tasks.has("t");
  m.applyTaskReasons(snap(5, { 2: "slurm_pending: Resources" }), ts);
  dirty = m.takeDirty();
  seen.left = reasons();
  seen.leftTouched = [...(dirty.cells.get("t") || [])].sort();
  m.applyTaskReasons(snap(5, { 2: "slurm_pending: Resources" }), ts);
  dirty = m.takeDirty();
  seen.unchanged = dirty.cells.size === 0 && !dirty.tasks.has("t");
  // Events win: a poll asked before them (still listing the index) changes nothing.
  const since = ts;
  m.apply(event(2, "CANCELLED", "stopped_by_user"));
  m.apply(event(1, "STAGING", null));
  m.apply(event(1, "PENDING", "backoff", { not_before: 2e9 }));
  m.applyTaskReasons(snap(5, { 1: "slurm_pending: Priority", 2: "slurm_pending" }), since);
  seen.stale = reasons();
  m.applyTaskReasons(snap(5, null), ts);
  seen.after = reasons();
  seen.left_over = t.queued?.size ?? 0;
  // O(size of the map): a poll reads and writes a few entries of 100,000, not all.
  const big = new JobModel("j");
  big.applySnapshot(snap(100000, null));
  const b = big.tasks.get("t");
  b.setState(5, 1); b.setState(99999, 1);  // STAGING
  let touched = 0;
  const counted = (array) => new Proxy(array, {
    get(target, key) {
      if (typeof key === "string" && /^[0-9]+$/.test(key)) touched += 1;
      const value = Reflect.get(target, key);
      return typeof value === "function" ? value.bind(target) : value;
    },
    set(target, key, value) {
      if (typeof key === "string" && /^[0-9]+$/.test(key)) touched += 1;
      target[key] = value;
      return true;
    },
  });
  b.states = counted(b.states);
  b.reasons = counted(b.reasons);
  big.applyTaskReasons(snap(100000, { 5: "a", 99999: "b" }), 0);
  seen.big = [b.reasons[5], b.reasons[99999], b.reasons[6]];
  big.applyTaskReasons(snap(100000, { 5: "a" }), 0);
  big.applyTaskReasons(snap(100000, null), 0);
  big.applyTaskReasons(snap(100000, null), 0);
  seen.bigAfter = [b.reasons[5], b.reasons[99999]];
  seen.bigTouched = touched;
  done(seen);
}).catch((error) => done({ error: String(error) }));
"""


def test_queue_reasons_meet_events_in_the_model(browser: WebDriver, logview: LogView) -> None:
    """A poll's ``queued`` map shows on STAGING instances only, replaces the reasons it set
    (or the snapshot's, when they are the same text), clears them when their index leaves
    the map, never replaces an event's reason (stopped_by_user, backoff, any other), and
    costs the size of the map, not of the task."""
    job = logview.submit({"name": "model", "tasks": [{"name": "t", "command": "true"}]})
    browser.get(logview.address(job))
    page_ready(browser)
    seen = browser.execute_async_script(QUEUED_IN_THE_MODEL)
    assert "error" not in seen, seen["error"]
    event_reason = "from an event"
    assert seen["snapshot"] == [None, "slurm_pending: Priority", None, event_reason, "max_parallel"]
    assert seen["polled"] == [
        None,
        PENDING_REASON,
        "slurm_pending",
        event_reason,
        "max_parallel",
    ]
    assert seen["touched"] == [1, 2] and seen["panel"] is True
    assert seen["left"] == [
        None,
        None,
        "slurm_pending: Resources",
        event_reason,
        "max_parallel",
    ]
    assert seen["leftTouched"] == [1, 2]
    assert seen["unchanged"] is True
    assert seen["stale"][2] == "stopped_by_user"
    assert seen["stale"][1].startswith("backoff until ")
    assert seen["after"] == seen["stale"]
    assert seen["after"][3:] == [event_reason, "max_parallel"]
    assert seen["left_over"] == 0
    assert seen["big"] == ["a", "b", None]
    assert seen["bigAfter"] == [None, None]
    assert seen["bigTouched"] < 50, seen["bigTouched"]
