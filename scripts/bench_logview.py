"""Benchmark of the job page in headless chromium: a 500-task, 10,000-instance job, live.

    .venv/bin/python scripts/bench_logview.py [--quick] [--pairs 3] [--tasks 500]
        [--instances 20] [--slots 16] [--window 5] [--state-root DIR] [--json-out PATH]

A real Runtime runs the job (instances of ``true``: every one makes four state changes, so
the page gets well over 1,000 events a second) in a child process of this script, so that
its CPU time is its own: the selenium client calls stay in this process, chromium and
chromedriver are process trees of their own. The same job runs to its end in interleaved
pairs (ABBA order): once with the job page open in the browser (the page holds
``/v1/events?job=ID`` and makes its other requests), once with no page open (the baseline:
the runtime and its HTTP server alone, same job, same slots). The page is opened right
after the submit and measured with the browser's performance API:

- ``first render``: navigation start to the first frame with every task, the grid and the
  task table drawn from the snapshot (the page is usable from then on);
- ``long tasks``: main-thread tasks over 50 ms during the load (each delays input that long);
- ``dag drawn``: when the layout (in a worker) has arrived and the SVG is drawn;
- under the stream: events received per second, frames drawn per second, the longest frame.

and on the server side, from the submit to the job's end, in the child:

- the runtime process's CPU seconds (``time.process_time()``: all its threads, not the
  instances it runs) with the page and without it; their difference divided by the job's
  wall time with the page is what the stream costs, as a share of one core;
- the job's wall time with and without the page.

The state dirs go on tmpfs (``/dev/shm``) unless ``--state-root`` says otherwise: on this
VM's ext4 every run deletes some 30,000 files, after which inode creations slow down run by
run (a full run measured the same job's CPU rising from 15 s to 38 s over six runs), noise
that has nothing to do with the stream and drowns it.

Medians over the pairs; a table with the targets at the end, after the JSON. ``--quick``
makes a smoke run (one pair, a 100 x 10 job). Its figures go to the README.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import anyio
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
  now: performance.now(), longTasks: window.__longTasks, state: document.body.dataset.state,
  marks: Object.fromEntries(performance.getEntriesByType("mark").map((m) => [m.name, m.startTime])),
  domReady: performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd} : null;
"""
TARGET_INTERACTIVE_MS = 1000
TARGET_FRAMES_PER_S = 10
TARGET_STREAM_CORE_PCT = 10


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


# --- the child: the Runtime and its HTTP server, alone in a process ----------------------


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def run_child(args: argparse.Namespace) -> None:
    """Run the job to its end; report its address, then CPU and wall time over the job.

    Stops the runtime only when the parent writes a line (the page gets the job's last
    events first)."""
    root = Path(tempfile.mkdtemp(prefix="abbench", dir=args.state_root))
    config = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=args.slots)})
    spec = big_spec(args.tasks, args.instances)
    try:
        async with Runtime(root / "state", config=config, logview="127.0.0.1:0") as runtime:
            cpu0, t0 = time.process_time(), time.monotonic()
            job = await runtime.submit(spec)
            url = await job.get_logview_address()
            emit({"url": url, "job": job.id})
            snapshot = await job.wait_for_completion()
            t1, cpu1 = time.monotonic(), time.process_time()
            emit(
                {
                    "cpu_s": cpu1 - cpu0,
                    "wall_s": t1 - t0,
                    "start": t0,
                    "end": t1,
                    "status": str(snapshot.status),
                }
            )
            await anyio.to_thread.run_sync(sys.stdin.readline)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- the parent: the browser and the pairs ----------------------------------------------


def read_message(stream: IO[str]) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        raise RuntimeError("the runtime's process ended early (its stderr is above)")
    message: dict[str, Any] = json.loads(line)
    return message


def poll(browser: webdriver.Chrome, ready: Callable[[Any], bool], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    sample = None
    while time.monotonic() < deadline:
        sample = browser.execute_script(SAMPLE)
        if sample and ready(sample):
            break
        time.sleep(0.1)
    assert sample is not None, "the page never showed its stats"
    return sample


def measure_page(browser: webdriver.Chrome, url: str, window: float) -> dict[str, Any]:
    """Open the page; its load figures, then a window of the stream."""
    browser.get(url + os.environ.get("BENCH_HASH", ""))
    first = poll(browser, lambda s: s["firstRender"] is not None and bool(s["dagDrawn"]), 30)
    start = browser.execute_script(SAMPLE)
    time.sleep(window)
    end = browser.execute_script(SAMPLE)
    span_s = (end["now"] - start["now"]) / 1000
    load_long = [t for t in end["longTasks"] if t[0] < first["firstRender"]]
    later_long = [t for t in end["longTasks"] if t[0] >= start["now"]]
    return {
        "first_render_ms": round(first["firstRender"]),
        "dag_drawn_ms": round(first["dagDrawn"]),
        "dom_ready_ms": round(first["domReady"]),
        "marks_ms": {k: round(v) for k, v in end["marks"].items()},
        "long_tasks_during_load_ms": [round(d) for _, d in load_long],
        "events_per_s": round((end["events"] - start["events"]) / span_s),
        "frames_per_s": round((end["renders"] - start["renders"]) / span_s, 1),
        "mean_frame_ms": round(
            (end["renderMs"] - start["renderMs"]) / max(1, end["renders"] - start["renders"]),
            2,
        ),
        "longest_frame_ms": round(end["maxRenderMs"], 1),
        "long_tasks_under_stream_ms": [round(d) for _, d in later_long],
        "window_ended_before_job": end["state"] != "ended",
    }


def run_once(args: argparse.Namespace, browser: webdriver.Chrome, *, page: bool) -> dict[str, Any]:
    """One run of the job in a fresh runtime process, with or without the page open."""
    command = [sys.executable, __file__, "--child"]
    command += ["--tasks", str(args.tasks), "--instances", str(args.instances)]
    command += ["--slots", str(args.slots), "--state-root", str(args.state_root)]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            hello = read_message(child.stdout)
            result: dict[str, Any] = {"page": page}
            if page:
                opened = time.monotonic()
                result |= measure_page(browser, hello["url"], args.window)
            done = read_message(child.stdout)
            if page:
                final = poll(browser, lambda s: s["state"] == "ended", 30)
                result["page_ended"] = final["state"] == "ended"
                result["events_received"] = final["events"]
                result["events_per_s_page_open_to_end"] = round(
                    final["events"] / max(1e-9, done["end"] - opened)
                )
                browser.get("about:blank")
            result |= {k: done[k] for k in ("cpu_s", "wall_s", "status")}
            child.stdin.write("stop\n")
            child.stdin.close()
            child.wait(timeout=120)
        except BaseException:
            child.kill()
            raise
    return result


def median(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def summarize(with_page: list[dict[str, Any]], without: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = list(zip(with_page, without, strict=True))
    stream_pct = [100 * (a["cpu_s"] - b["cpu_s"]) / a["wall_s"] for a, b in pairs]
    wall_ratio = [a["wall_s"] / b["wall_s"] for a, b in pairs]
    cpu_ratio = [a["cpu_s"] / b["cpu_s"] for a, b in pairs]
    return {
        "first_render_ms": median(with_page, "first_render_ms"),
        "dag_drawn_ms": median(with_page, "dag_drawn_ms"),
        "dom_ready_ms": median(with_page, "dom_ready_ms"),
        "long_tasks_during_load_ms": sorted(
            d for run in with_page for d in run["long_tasks_during_load_ms"]
        ),
        "events_per_s": median(with_page, "events_per_s"),
        "events_per_s_page_open_to_end": median(with_page, "events_per_s_page_open_to_end"),
        "events_received": median(with_page, "events_received"),
        "frames_per_s": median(with_page, "frames_per_s"),
        "frames_per_s_min": min(run["frames_per_s"] for run in with_page),
        "mean_frame_ms": median(with_page, "mean_frame_ms"),
        "longest_frame_ms": median(with_page, "longest_frame_ms"),
        "longest_frame_ms_max": max(run["longest_frame_ms"] for run in with_page),
        "cpu_s_with_page": round(median(with_page, "cpu_s"), 3),
        "cpu_s_without_page": round(median(without, "cpu_s"), 3),
        "cpu_ratio": round(statistics.median(cpu_ratio), 3),
        "wall_s_with_page": round(median(with_page, "wall_s"), 3),
        "wall_s_without_page": round(median(without, "wall_s"), 3),
        "wall_ratio": round(statistics.median(wall_ratio), 3),
        "stream_cpu_pct_of_core": round(statistics.median(stream_pct), 2),
        "stream_cpu_pct_of_core_per_pair": [round(p, 2) for p in stream_pct],
    }


def table(summary: dict[str, Any], args: argparse.Namespace, load: tuple[float, ...]) -> str:
    s = summary

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    interactive = s["first_render_ms"] < TARGET_INTERACTIVE_MS
    frames = s["frames_per_s_min"] >= TARGET_FRAMES_PER_S
    stream = s["stream_cpu_pct_of_core"] < TARGET_STREAM_CORE_PCT
    long_load = ", ".join(f"{d} ms" for d in s["long_tasks_during_load_ms"]) or "none"
    rows = [
        ("what", "with the page open", "baseline, no page, same run", "ratio", "target"),
        ("---",) * 5,
        (
            "first render (page interactive)",
            f"{s['first_render_ms']:.0f} ms",
            "",
            "",
            f"< 1 s: {met(interactive)}",
        ),
        ("DAG drawn", f"{s['dag_drawn_ms']:.0f} ms", "", "", ""),
        ("long tasks during the load", long_load, "", "", ""),
        (
            f"frames/s under the stream ({args.window:g} s window; min over runs)",
            f"{s['frames_per_s']:.1f} (min {s['frames_per_s_min']:.1f})",
            "",
            "",
            f">= {TARGET_FRAMES_PER_S}/s: {met(frames)}",
        ),
        (
            "events/s delivered to the page: window; page open to job end",
            f"{s['events_per_s']:,.0f}; {s['events_per_s_page_open_to_end']:,.0f}",
            "",
            "",
            "",
        ),
        (
            "mean frame; longest frame (median, max over runs)",
            f"{s['mean_frame_ms']:.2f} ms; {s['longest_frame_ms']:.1f} ms, "
            f"{s['longest_frame_ms_max']:.1f} ms",
            "",
            "",
            "",
        ),
        (
            "job wall time, submit to end",
            f"{s['wall_s_with_page']:.2f} s",
            f"{s['wall_s_without_page']:.2f} s",
            f"{s['wall_ratio']:.2f}x",
            "",
        ),
        (
            "runtime process CPU over the job",
            f"{s['cpu_s_with_page']:.2f} s",
            f"{s['cpu_s_without_page']:.2f} s",
            f"{s['cpu_ratio']:.2f}x",
            "",
        ),
        (
            "stream's cost: CPU difference / wall time with the page",
            f"{s['stream_cpu_pct_of_core']:.1f}% of one core "
            f"(pairs: {', '.join(f'{p:.1f}%' for p in s['stream_cpu_pct_of_core_per_pair'])})",
            "",
            "",
            f"< {TARGET_STREAM_CORE_PCT}%: {met(stream)}",
        ),
    ]
    head = (
        f"{args.tasks} tasks x {args.instances} = {args.tasks * args.instances:,} instances "
        f"of `true`, {args.slots} slots, state dirs in {args.state_root}; "
        f"{args.pairs} interleaved pair(s), medians; "
        f"load average before: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"
    )
    return head + "\n\n" + "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one pair, a 100 x 10 job")
    parser.add_argument("--pairs", type=int, default=None, help="interleaved pairs (3)")
    parser.add_argument("--tasks", type=int, default=None, help="500 (--quick: 100)")
    parser.add_argument("--instances", type=int, default=None, help="20 (--quick: 10)")
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--window", type=float, default=None, help="seconds of stream (5)")
    parser.add_argument(
        "--state-root",
        type=Path,
        default=Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path("/tmp"),
        help="where the runtime's state dirs go (/dev/shm: tmpfs)",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging(level=os.environ.get("BENCH_LOG", "warning"), stream=sys.stderr)
    args.tasks = args.tasks or (100 if args.quick else 500)
    args.instances = args.instances or (10 if args.quick else 20)
    if args.child:
        anyio.run(run_child, args)
        return
    args.pairs = args.pairs or (1 if args.quick else 3)
    args.window = args.window or (1.0 if args.quick else 5.0)
    load = os.getloadavg()

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
    with_page: list[dict[str, Any]] = []
    without: list[dict[str, Any]] = []
    try:
        for n in range(args.pairs):
            order = (True, False) if n % 2 == 0 else (False, True)  # ABBA
            for page in order:
                run = run_once(args, browser, page=page)
                (with_page if page else without).append(run)
                print(
                    f"pair {n + 1}, {'page' if page else 'no page'}: "
                    f"{run['wall_s']:.2f} s, CPU {run['cpu_s']:.2f} s, {run['status']}",
                    file=sys.stderr,
                )
    finally:
        browser.quit()
    summary = summarize(with_page, without)
    result = {
        "tasks": args.tasks,
        "instances": args.tasks * args.instances,
        "slots": args.slots,
        "pairs": args.pairs,
        "state_root": str(args.state_root),
        "load_average_before": load,
        "summary": summary,
        "runs_with_page": with_page,
        "runs_without_page": without,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n")
    print()
    print(table(summary, args, load))


if __name__ == "__main__":
    main()
