"""Benchmark of the job page in headless chromium: a 500-task, 10,000-instance job, live.

    .venv/bin/python scripts/bench_logview.py [--tasks 500] [--instances 20] [--slots 16]

A real Runtime runs the job (instances of ``true``: every one makes four state changes, so
the page gets well over 1,000 events a second); the page is opened right after the submit
and measured with the browser's performance API:

- ``first render``: navigation start to the first frame with every task, the grid and the
  task table drawn from the snapshot (the page is usable from then on);
- ``long tasks``: main-thread tasks over 50 ms during the load (none: nothing blocks input);
- ``dag drawn``: when the layout (in a worker) has arrived and the SVG is drawn;
- under the stream: events received per second, frames drawn per second, the longest frame.

Its figures go to the README.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from anyio.from_thread import start_blocking_portal
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.logging import configure_logging

LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__longTasks.push([e.startTime, e.duration]);
}).observe({type: "longtask", buffered: true});
"""
SAMPLE = """
const s = window.aiobatch && window.aiobatch.stats;
return s ? {events: s.events, renders: s.renders, renderMs: s.renderMs,
  maxRenderMs: s.maxRenderMs, firstRender: s.firstRender, dagDrawn: s.dagDrawn,
  now: performance.now(), longTasks: window.__longTasks,
  marks: Object.fromEntries(performance.getEntriesByType("mark").map((m) => [m.name, m.startTime])),
  domReady: performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd} : null;
"""


def big_spec(tasks: int, instances: int) -> dict[str, Any]:
    """Layers of 50 tasks; each task after one or two tasks of the layer before."""
    width = 50
    spec_tasks: list[dict[str, Any]] = []
    for n in range(tasks):
        layer, pos = divmod(n, width)
        deps = []
        if layer:
            base = (layer - 1) * width
            deps = sorted({f"t{base + (pos * 7) % width}", f"t{base + (pos * 13 + 3) % width}"})
        spec_tasks.append(
            {"name": f"t{n}", "instances": instances, "command": "true", "depends_on": deps}
        )
    return {"name": f"bench {tasks}x{instances}", "tasks": spec_tasks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--instances", type=int, default=20)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--window", type=float, default=5.0, help="seconds of stream measured")
    args = parser.parse_args()
    configure_logging(level=os.environ.get("BENCH_LOG", "warning"), stream=sys.stderr)

    root = Path(tempfile.mkdtemp(prefix="abbench", dir="/tmp"))
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    browser.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
    )
    browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": LONG_TASKS})
    config = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=args.slots)})
    try:
        with start_blocking_portal(backend="asyncio") as portal:
            runtime = Runtime(root / "state", config=config, logview="127.0.0.1:0")
            with portal.wrap_async_context_manager(runtime):
                job = portal.call(runtime.submit, big_spec(args.tasks, args.instances))
                url = portal.call(job.get_logview_address)
                assert url is not None
                browser.get(url + os.environ.get("BENCH_HASH", ""))
                deadline = time.monotonic() + 30
                first = None
                while time.monotonic() < deadline:
                    first = browser.execute_script(SAMPLE)
                    if first and first["firstRender"] is not None and first["dagDrawn"]:
                        break
                    time.sleep(0.1)
                assert first is not None
                start = browser.execute_script(SAMPLE)
                time.sleep(args.window)
                end = browser.execute_script(SAMPLE)
                snapshot = portal.call(job.snapshot)
                span_s = (end["now"] - start["now"]) / 1000
                load_long = [t for t in end["longTasks"] if t[0] < first["firstRender"]]
                later_long = [t for t in end["longTasks"] if t[0] >= start["now"]]
                result = {
                    "tasks": args.tasks,
                    "instances": args.tasks * args.instances,
                    "first_render_ms": round(first["firstRender"]),
                    "dag_drawn_ms": round(first["dagDrawn"]),
                    "dom_ready_ms": round(first["domReady"]),
                    "marks_ms": {k: round(v) for k, v in end["marks"].items()},
                    "long_tasks_during_load_ms": [round(d) for _, d in load_long],
                    "events_per_s": round((end["events"] - start["events"]) / span_s),
                    "frames_per_s": round((end["renders"] - start["renders"]) / span_s, 1),
                    "mean_frame_ms": round(
                        (end["renderMs"] - start["renderMs"])
                        / max(1, end["renders"] - start["renders"]),
                        2,
                    ),
                    "longest_frame_ms": round(end["maxRenderMs"], 1),
                    "long_tasks_under_stream_ms": [round(d) for _, d in later_long],
                    "job_status_at_end": snapshot.status,
                }
                print(json.dumps(result, indent=2))
                portal.call(runtime.stop_job, job.id)
    finally:
        browser.quit()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
