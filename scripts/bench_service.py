#!/usr/bin/env python3
"""Service benchmarks: ``aiobatch serve`` over its control socket, each against a baseline.

    .venv/bin/python scripts/bench_service.py [--quick] [--instances 1000] [--duration 5]
        [--reps 3] [--concurrency 8] [--submissions 30] [--json-out PATH]

One ``aiobatch serve`` process (state dir in a temp dir on disk, ``[compute_envs.local]
slots = N``) is started the way systemd starts it: a datagram socket is its NOTIFY_SOCKET
and nothing talks to it before READY=1. Then, from this one client process:

1. Status requests while 1,000 instances run. A job of one task of 1,000 instances of
   ``sleep 600`` is submitted and every instance is seen RUNNING on the event stream (not
   merely STAGING: ``running`` in a snapshot counts both), its process alive. Then
   ``GET /v1/jobs/ID`` (``Client.job_snapshot``, no instances) is driven for a fixed time
   with 1 request in flight (latency p50/p99 and req/s) and with several in flight (req/s).
   Baseline, interleaved with it: a bare aiohttp.web app in another process on another
   unix socket that answers the same path with the very bytes the service answered (one
   body captured first), driven by the same ``Client``. The CPU time that the server process
   and this client process spend during each window comes from /proc/PID/stat and
   ``time.process_time``: with client and server sharing 2 cores, the client is part of
   what is measured. The big job is then stopped and awaited.
2. Submission to first instance start of a one-task job (``command: ["true"]``): the event
   stream is subscribed first, ``time.time()`` taken right before ``Client.submit``, then
   (a) the time until the job's first ``InstanceStateChanged`` RUNNING arrives, and (b)
   that event's ``ts`` minus the pre-submit time (service side, same clock). Baselines,
   interleaved with it: the same through an in-process ``Runtime`` (first RUNNING on
   ``runtime.subscribe()``), and a bare ``await anyio.open_process(["true"])``, the floor
   of starting any process. Each job is awaited to its end before the next one.

Rates and CPU figures are medians over the repetitions (windows); latency percentiles pool
every request of the 1-in-flight windows. The markdown table goes to stdout, progress to
stderr, everything measured to ``--json-out`` (default bench-results/service.json). Exit
status: 0, or 1 when a check failed (or, with ``--strict``, a target was missed).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import anyio
from anyio.abc import Process, UNIXDatagramSocket
from benchreport import Report, Row, bench_parser, note

from aiobatch import Client, Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import Event, InstanceStateChanged
from aiobatch.logging import configure_logging

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON_OUT = Path("bench-results") / "service.json"  # relative to the repo root
TASK = "t"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
RATE_TARGET = 1000.0  # requests per second
LATENCY_TARGET_S = 0.050  # submission to first instance start

# A bare aiohttp.web app answering GET /v1/jobs/{id} with fixed bytes: the floor of serving
# one small JSON answer over a unix socket with aiohttp. READY=1 like the service.
BASELINE_SERVER = """
import asyncio, os, signal, socket, sys
from aiohttp import web

async def main(sock_path, body_path):
    with open(body_path, "rb") as f:
        body = f.read()

    async def job(request):
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/v1/jobs/{job_id}", job)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.UnixSite(runner, sock_path).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
    await stop.wait()
    await runner.cleanup()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


# -- helpers ---------------------------------------------------------------------------------


def aiobatch_cli() -> Path:
    """The ``aiobatch`` console script installed next to this interpreter."""
    candidate = Path(sys.executable).parent / "aiobatch"
    if not candidate.exists():
        raise SystemExit("bench: the aiobatch command is not installed (run scripts/setup)")
    return candidate


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its own threads; not its children)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # fields[0] is field 3, the state
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_running(pid: int) -> bool:
    """Whether ``pid`` names a live process (not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def quantile(samples: Sequence[float], q: int) -> float:
    """The q-th percentile (nearest rank), q in 1..99."""
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 0.01 else f"{seconds * 1000:.1f} ms"


class Served:
    """A server process that says READY=1 on its NOTIFY_SOCKET once it listens."""

    def __init__(self, name: str, argv: Sequence[str | Path], root: Path, socket: Path) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.root = root
        self.socket_path = socket
        self.log_path = root / f"{name}.log"
        self.process: Process | None = None
        self._notify: UNIXDatagramSocket | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    async def start(self) -> None:
        notify_path = self.root / f"{self.name}.notify"
        self._notify = await anyio.create_unix_datagram_socket(local_path=notify_path)
        self._log = self.log_path.open("wb")
        self.process = await anyio.open_process(
            self.argv,
            env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        with anyio.move_on_after(START_TIMEOUT_S):
            while True:
                data, _ = await self._notify.receive()
                if data == b"READY=1" or data.startswith(b"READY=1\n"):
                    return
        raise RuntimeError(f"{self.name} did not say READY=1: {self.log_tail()}")

    def log_tail(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_bytes()[-3000:].decode(errors="replace")

    async def stop(self) -> int | None:
        """SIGTERM, then a second SIGTERM (the service cuts its grace short), then SIGKILL."""
        process, self.process = self.process, None
        try:
            if process is not None:
                for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
                    if process.returncode is not None:
                        break
                    process.send_signal(sig)
                    with anyio.move_on_after(STOP_TIMEOUT_S):
                        await process.wait()
                    if process.returncode is None:
                        note(f"{self.name} still running {STOP_TIMEOUT_S:.0f} s after {sig.name}")
                await process.aclose()
                return process.returncode
            return None
        finally:
            if self._notify is not None:
                await self._notify.aclose()
                self._notify = None
            if self._log is not None:
                self._log.close()
                self._log = None


# -- 1. status requests while N instances run ------------------------------------------------


@dataclass
class Window:
    """One fixed-time load of status requests against one server."""

    concurrency: int
    requests: int
    wall_s: float
    server_cpu_s: float
    client_cpu_s: float
    latencies_s: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.wall_s

    @property
    def server_cores(self) -> float:
        return self.server_cpu_s / self.wall_s

    @property
    def client_cores(self) -> float:
        return self.client_cpu_s / self.wall_s

    def as_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "wall_s": self.wall_s,
            "req_per_s": self.rate,
            "server_cpu_s": self.server_cpu_s,
            "client_cpu_s": self.client_cpu_s,
            "latency_p50_s": quantile(self.latencies_s, 50),
            "latency_p99_s": quantile(self.latencies_s, 99),
        }


async def load(
    client: Client, job_id: str, server: Served, concurrency: int, duration_s: float
) -> Window:
    """``concurrency`` loops of ``job_snapshot`` until ``duration_s`` has passed."""
    latencies: list[float] = []
    cpu_before, client_before = server.cpu_seconds(), time.process_time()
    start = time.perf_counter()
    deadline = start + duration_s

    async def worker() -> None:
        while (began := time.perf_counter()) < deadline:
            await client.job_snapshot(job_id)
            latencies.append(time.perf_counter() - began)

    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    wall = time.perf_counter() - start
    return Window(
        concurrency=concurrency,
        requests=len(latencies),
        wall_s=wall,
        server_cpu_s=server.cpu_seconds() - cpu_before,
        client_cpu_s=time.process_time() - client_before,
        latencies_s=latencies,
    )


async def run_all_instances(client: Client, n: int, report: Report) -> tuple[str, list[int], float]:
    """Submit N x ``sleep 600``; return once every instance has been seen RUNNING."""
    spec = {
        "name": f"status-load-{n}",
        "tasks": [{"name": TASK, "command": ["sleep", "600"], "instances": n}],
    }
    pids: dict[int, int] = {}
    with anyio.fail_after(max(120.0, n * 0.1)):
        async with client.subscribe() as events:  # before submitting: nothing is missed
            start = time.perf_counter()
            job = await client.submit(spec)
            async for event in events:
                if (
                    isinstance(event, InstanceStateChanged)
                    and event.job_id == job.id
                    and event.state == "RUNNING"
                ):
                    pids[event.index] = event.pid or 0
                    if len(pids) == n:
                        break
                elif isinstance(event, InstanceStateChanged) and event.job_id == job.id:
                    report.check(
                        event.state == "STAGING",
                        f"1: instance {event.index} went {event.state} ({event.reason})",
                    )
            took = time.perf_counter() - start
    return job.id, list(pids.values()), took


async def bench_status(
    args: argparse.Namespace, report: Report, service: Served, root: Path
) -> str:
    n = args.instances
    note(f"1. submitting {n} x `sleep 600`, waiting for all of them to be RUNNING")
    async with Client(service.socket_path) as client:
        job_id, pids, took = await run_all_instances(client, n, report)
        snapshot = await client.job_snapshot(job_id)
        task = snapshot.tasks[TASK]
        alive = sum(process_running(pid) for pid in pids)
        report.check(
            snapshot.status == "RUNNING" and task.running == n and alive == n,
            f"1: expected job RUNNING with {n} running, {n} processes alive; got "
            f"{snapshot.status}, running={task.running}, alive={alive}",
        )
        note(f"   all {n} RUNNING after {took:.1f} s ({alive} processes alive)")

        # The service idle (nothing asked of it) with N instances running.
        idle_before = service.cpu_seconds()
        await anyio.sleep(args.idle_s)
        idle_cores = (service.cpu_seconds() - idle_before) / args.idle_s

        # One real body of GET /v1/jobs/ID, served byte for byte by the baseline.
        connector = aiohttp.UnixConnector(path=str(service.socket_path))
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"http://localhost/v1/jobs/{job_id}") as response:
                response.raise_for_status()
                body = await response.read()
        body_path = root / "body.json"
        body_path.write_bytes(body)
        baseline_socket = root / "baseline.sock"
        baseline = Served(
            "baseline",
            [sys.executable, "-c", BASELINE_SERVER, baseline_socket, body_path],
            root,
            baseline_socket,
        )
        await baseline.start()
        try:
            async with Client(baseline_socket) as base_client:
                served = (await base_client.job_snapshot(job_id), snapshot)
                report.check(served[0] == served[1], "1: the baseline answers another snapshot")
                windows = await status_windows(
                    args, [(client, service), (base_client, baseline)], job_id
                )
        finally:
            await baseline.stop()

        note(f"   stopping the {n} instances")
        stop_start = time.perf_counter()
        await client.stop_job(job_id)
        with anyio.fail_after(STOP_TIMEOUT_S + 30):
            ended = await client.wait_job(job_id)
        stop_took = time.perf_counter() - stop_start
        report.check(ended.status == "CANCELLED", f"1: the stopped job ended {ended.status}")
        still = sum(process_running(pid) for pid in pids)
        report.check(still == 0, f"1: {still} instance processes outlived the stopped job")

    summarize_status(args, report, windows, n, took, stop_took, idle_cores, len(body))
    return job_id


async def status_windows(
    args: argparse.Namespace, targets: list[tuple[Client, Served]], job_id: str
) -> dict[tuple[str, int], list[Window]]:
    """Interleaved windows: per repetition, per concurrency, each server in turn (the order
    alternating between repetitions to spread drift)."""
    levels = [1, args.concurrency]
    for client, server in targets:  # warm-up: connections open, code paths hot
        await load(client, job_id, server, args.concurrency, min(0.5, args.duration))
    windows: dict[tuple[str, int], list[Window]] = {}
    for rep in range(args.reps):
        order = targets if rep % 2 == 0 else targets[::-1]
        for level in levels:
            for client, server in order:
                window = await load(client, job_id, server, level, args.duration)
                windows.setdefault((server.name, level), []).append(window)
                note(
                    f"   rep {rep + 1}/{args.reps} {server.name:8} {level} in flight: "
                    f"{window.rate:,.0f} req/s, server {window.server_cores:.0%} of a core, "
                    f"client {window.client_cores:.0%}"
                )
    return windows


def summarize_status(
    args: argparse.Namespace,
    report: Report,
    windows: dict[tuple[str, int], list[Window]],
    n: int,
    running_after_s: float,
    stop_took_s: float,
    idle_cores: float,
    body_bytes: int,
) -> None:
    def rate(name: str, level: int) -> float:
        return statistics.median(w.rate for w in windows[name, level])

    def pooled(name: str, level: int) -> list[float]:
        return [s for w in windows[name, level] for s in w.latencies_s]

    def cpu(name: str, level: int) -> tuple[float, float, float]:
        """Server cores, server CPU per request, client cores (medians)."""
        ws = windows[name, level]
        return (
            statistics.median(w.server_cores for w in ws),
            statistics.median(w.server_cpu_s / w.requests for w in ws),
            statistics.median(w.client_cores for w in ws),
        )

    report.sections["status"] = {
        "instances": n,
        "all_running_after_s": running_after_s,
        "stop_to_cancelled_s": stop_took_s,
        "idle_service_cores": idle_cores,
        "body_bytes": body_bytes,
        "duration_s": args.duration,
        "windows": {
            f"{name}/{level}": [w.as_json() for w in ws] for (name, level), ws in windows.items()
        },
    }
    lat, base_lat = pooled("aiobatch", 1), pooled("baseline", 1)
    ours1, base1 = rate("aiobatch", 1), rate("baseline", 1)
    report.row(
        Row(
            f"1. `GET /v1/jobs/ID` ({body_bytes} B), 1 in flight, {n:,} instances RUNNING",
            f"{ours1:,.0f} req/s; p50 {ms(quantile(lat, 50))}, p99 {ms(quantile(lat, 99))}",
            f"bare aiohttp app: {base1:,.0f} req/s; p50 {ms(quantile(base_lat, 50))}, "
            f"p99 {ms(quantile(base_lat, 99))}",
            f"{ours1 / base1:.2f}x",
            f">= {RATE_TARGET:,.0f} req/s",
            ours1 >= RATE_TARGET,
        )
    )
    c = args.concurrency
    ours_c, base_c = rate("aiobatch", c), rate("baseline", c)
    report.row(
        Row(
            f"1. ... {c} in flight",
            f"{ours_c:,.0f} req/s",
            f"bare aiohttp app: {base_c:,.0f} req/s",
            f"{ours_c / base_c:.2f}x",
            f">= {RATE_TARGET:,.0f} req/s",
            ours_c >= RATE_TARGET,
        )
    )
    for level in (1, c):
        ours_cpu, base_cpu = cpu("aiobatch", level), cpu("baseline", level)
        report.row(
            Row(
                f"1. ... CPU, {level} in flight: server process (per request); client process",
                f"{ours_cpu[0]:.0%} of a core ({ours_cpu[1] * 1e6:.0f} us/req); "
                f"client {ours_cpu[2]:.0%}",
                f"{base_cpu[0]:.0%} ({base_cpu[1] * 1e6:.0f} us/req); client {base_cpu[2]:.0%}",
                f"{ours_cpu[1] / base_cpu[1]:.2f}x per req",
            )
        )
    report.row(
        Row(
            f"1. ... {n:,} x `sleep 600`: submit to all RUNNING; idle service; stop to CANCELLED",
            f"{fmt_s(running_after_s)}; {idle_cores:.1%} of a core; {fmt_s(stop_took_s)}",
        )
    )


# -- 2. submission to first instance start --------------------------------------------------


@dataclass
class Start:
    client_s: float  # until the first RUNNING event reached this process
    service_s: float  # that event's ts minus the pre-submit time


FIRST_START_SPEC = {"name": "first-start", "tasks": [{"name": TASK, "command": ["true"]}]}


async def start_via_service(client: Client) -> Start:
    async with client.subscribe() as events:
        began = time.time()
        job = await client.submit(FIRST_START_SPEC)
        async for event in events:
            if _first_running(event, job.id):
                seen = time.time()
                assert isinstance(event, InstanceStateChanged)
                start = Start(seen - began, event.ts - began)
                break
        else:
            raise RuntimeError("the event stream ended before the instance ran")
    ended = await client.wait_job(job.id)
    if ended.status != "SUCCEEDED":
        raise RuntimeError(f"first-start job {job.id} ended {ended.status}")
    return start


async def start_via_runtime(runtime: Runtime) -> Start:
    async with runtime.subscribe() as events:
        began = time.time()
        job = await runtime.submit(FIRST_START_SPEC)
        async for event in events:
            if _first_running(event, job.id):
                seen = time.time()
                assert isinstance(event, InstanceStateChanged)
                start = Start(seen - began, event.ts - began)
                break
        else:
            raise RuntimeError("the bus stream ended before the instance ran")
    ended = await job.wait_for_completion()
    if ended.status != "SUCCEEDED":
        raise RuntimeError(f"first-start job {job.id} ended {ended.status}")
    return start


async def start_bare_process() -> Start:
    began = time.perf_counter()
    process = await anyio.open_process(["true"])
    took = time.perf_counter() - began
    await process.wait()
    await process.aclose()
    return Start(took, took)


def _first_running(event: Event, job_id: str) -> bool:
    return (
        isinstance(event, InstanceStateChanged)
        and event.job_id == job_id
        and event.state == "RUNNING"
    )


async def bench_first_start(
    args: argparse.Namespace, report: Report, service: Served, root: Path, config: Config
) -> None:
    reps, warmups = args.submissions, args.warmups
    note(f"2. submit to first RUNNING: {warmups} warm-ups, then {reps} interleaved repetitions")
    state = Path(tempfile.mkdtemp(prefix="runtime-", dir=root))
    async with Client(service.socket_path) as client, Runtime(state, config=config) as runtime:
        runs: list[tuple[str, Callable[[], Awaitable[Start]]]] = [
            ("service", lambda: start_via_service(client)),
            ("runtime", lambda: start_via_runtime(runtime)),
            ("process", start_bare_process),
        ]
        samples: dict[str, list[Start]] = {name: [] for name, _ in runs}
        for rep in range(warmups + reps):
            for name, run in runs if rep % 2 == 0 else runs[::-1]:
                with anyio.fail_after(30):
                    start = await run()
                if rep >= warmups:
                    samples[name].append(start)

    def stats(name: str, attr: str) -> tuple[float, float]:
        values = [getattr(s, attr) for s in samples[name]]
        return statistics.median(values), quantile(values, 90)

    def fmt(pair: tuple[float, float]) -> str:
        return f"{ms(pair[0])} (p90 {ms(pair[1])})"

    report.sections["first_start"] = {
        "warmups": warmups,
        "repetitions": reps,
        **{name: [asdict(s) for s in values] for name, values in samples.items()},
    }
    for attr, label in (
        ("client_s", "client-observed: pre-submit to the RUNNING event received"),
        ("service_s", "service side: RUNNING event `ts` minus pre-submit time"),
    ):
        ours, base = stats("service", attr), stats("runtime", attr)
        report.row(
            Row(
                f"2. submit 1-task job -> first instance RUNNING, {label}",
                fmt(ours),
                f"in-process Runtime: {fmt(base)}",
                f"{ours[0] / base[0]:.2f}x (+{(ours[0] - base[0]) * 1000:.1f} ms)",
                f"< {LATENCY_TARGET_S * 1000:.0f} ms",
                ours[0] < LATENCY_TARGET_S,
            )
        )
    floor = stats("process", "client_s")
    report.row(
        Row(
            "2. ... floor: `await anyio.open_process(['true'])` until spawned",
            "",
            fmt(floor),
            f"{stats('service', 'client_s')[0] / floor[0]:.1f}x",
        )
    )


# -- main -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, report: Report) -> dict[str, Any]:
    # Short paths: a unix socket path has at most 107 bytes.
    with tempfile.TemporaryDirectory(prefix="abbench-") as tmp:
        root = Path(tmp)
        slots = max(args.instances, 1)
        (root / "config.toml").write_text(f"[compute_envs.local]\nslots = {slots}\n")
        config = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=slots)})
        service = Served(
            "aiobatch",
            [
                *(aiobatch_cli(), "serve", "--config", root / "config.toml"),
                *("--state-dir", root / "state", "--socket", root / "ctl.sock"),
            ],
            root,
            root / "ctl.sock",
        )
        started = time.perf_counter()
        await service.start()
        note(f"aiobatch serve (pid {service.pid}) ready in {time.perf_counter() - started:.2f} s")
        try:
            if "1" in args.sections:
                await bench_status(args, report, service, root)
            if "2" in args.sections:
                await bench_first_start(args, report, service, root, config)
        except BaseException:
            note(f"service log tail:\n{service.log_tail()}")
            raise
        finally:
            code = await service.stop()
            report.check(code == 0, f"aiobatch serve exited with {code} after SIGTERM")
    return {"slots": slots}


def _parser() -> argparse.ArgumentParser:
    parser = bench_parser(__doc__, DEFAULT_JSON_OUT)
    parser.add_argument("--quick", action="store_true", help="small counts, short windows")
    parser.add_argument("--instances", type=int, help="running instances (default 1000)")
    parser.add_argument("--duration", type=float, help="seconds per load window (default 5)")
    parser.add_argument("--reps", type=int, help="load windows per server and level (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument("--submissions", type=int, help="submit-to-start repetitions (30)")
    parser.add_argument("--warmups", type=int, help="submit-to-start warm-ups (default 3)")
    parser.add_argument("--only", default="", help="sections to run: 1, 2 or 1,2 (default)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    defaults = {
        "instances": (1000, 100),
        "duration": (5.0, 1.0),
        "reps": (3, 1),
        "submissions": (30, 5),
        "warmups": (3, 1),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.idle_s = 1.0 if args.quick else 2.0
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()] or ["1", "2"]
    if set(args.sections) - {"1", "2"}:
        raise SystemExit(f"bench: unknown section(s) in {args.only!r}; known: 1, 2")
    configure_logging("json", "warning")  # the in-process Runtime of section 2 stays quiet
    out = args.json_out if args.json_out.is_absolute() else REPO / args.json_out
    report = Report()
    started = time.time()
    load_before = os.getloadavg()
    setup = anyio.run(run, args, report)
    return report.finish(
        out,
        started=started,
        load_before=load_before,
        strict=args.strict,
        baseline="Baseline, same run",
        fields={
            "quick": args.quick,
            "settings": {
                "instances": args.instances,
                "duration_s": args.duration,
                "reps": args.reps,
                "concurrency": args.concurrency,
                "submissions": args.submissions,
                "warmups": args.warmups,
                **setup,
            },
        },
        summary=f"; {os.cpu_count()} CPUs; whole run {time.time() - started:.0f} s",
    )


if __name__ == "__main__":
    sys.exit(main())
