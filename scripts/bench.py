#!/usr/bin/env python3
"""Core benchmarks of aiobatch, each against a baseline measured in the same run.

    .venv/bin/python scripts/bench.py [--quick] [--no-big] [--only 1,3] [--json-out PATH]

1. ``aiobatch run --quiet`` of one task with 2,000 instances of ``true`` at 8 slots (every state
   change persisted), as a whole process, vs a plain asyncio script spawning the same processes
   8 at a time, also as a whole process; and the CPU of each side's whole process tree.
2. Snakemake vs ``aiobatch run`` on 500 independent jobs, a chain of 200 and a single job.
3. Group commit: 6,000 ``InstanceStateChanged`` events through ``Store.on_event`` + ``flush``
   vs one awaited aiosqlite ``execute`` per row.
4. ``from aiobatch import Runtime`` vs importing its dependencies alone; no container/cloud
   SDK imported by a local-only run.
5. ``Runtime.submit`` of a 10,000-task DAG (about 20,000 edges) up to the first dispatch; and
   ``resolve_spec`` alone.
6. Peak RSS and wall time of ``aiobatch run`` with 100,000 instances (``--no-big`` skips it).
7. ``aiobatch run`` of a chain of 200 tasks and of a 1-task job vs a plain asyncio loop
   running the same processes one after the other.

aiobatch's modules are compiled to bytecode first, as an installed package's are (an editable
checkout under PYTHONDONTWRITEBYTECODE would otherwise compile them at every start).
Whole-process timings are wall clock around fork to reap (``os.wait4``, which also gives the
child's peak RSS); each repetition gets a fresh state or working dir. Timings report the
median and the best of the repetitions; ratios use medians. The markdown table goes to stdout,
progress to stderr, everything measured to ``--json-out`` (default bench-results/core.json).
State and working dirs live under the system temp dir (``TMPDIR`` moves them); aiobatch makes a
work dir per instance there (and log files for those that write), so a run first waits until
6 minutes after an earlier run removed its files (``--no-settle`` skips it; see ``settle``), and
records that file system's mkdir and create latency at the start and the end.
Exit status: 0, or 1 when a correctness check failed (or, with ``--strict``, a target was
missed).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from benchreport import Report, Row, bench_parser, note

from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import Event, InstanceStateChanged, event_encoder
from aiobatch.logging import configure_logging
from aiobatch.runtime import Runtime
from aiobatch.schema import SCHEMA, UPSERT_INSTANCE
from aiobatch.spec import resolve_spec
from aiobatch.store import Store

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON_OUT = Path("bench-results") / "core.json"  # relative to the repo root
DEFAULT_SNAKEMAKE_VENV = Path("bench-results") / "snakemake-venv"
SLOTS = 8
SHM = Path("/dev/shm")  # tmpfs on Linux
PROCESS_TIMEOUT_S = 1800.0
MIB = 1024 * 1024

# Spawns N `true` 8 at a time with nothing but asyncio: the floor for "run N processes".
ASYNCIO_BASELINE = """
import asyncio, sys

async def main(n, slots):
    sem = asyncio.Semaphore(slots)

    async def one():
        async with sem:
            proc = await asyncio.create_subprocess_exec("true")
            await proc.wait()

    await asyncio.gather(*(one() for _ in range(n)))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""

# Runs N `true` one after the other with nothing but asyncio: the floor for a chain of N.
SEQUENTIAL_BASELINE = """
import asyncio, sys

async def main(n):
    for _ in range(n):
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()

asyncio.run(main(int(sys.argv[1])))
"""

# Measures an import inside a fresh interpreter (interpreter startup excluded).
IMPORT_PROBE = """
import sys, time
t = time.perf_counter()
for name in sys.argv[1:]:
    __import__(name)
print(time.perf_counter() - t)
"""

# Runs a job through the CLI entry point in this very process, then lists what got imported.
MODULES_PROBE = """
import json, sys
from aiobatch.cli import main
rc = main(["run", sys.argv[1], "--state-dir", sys.argv[2], "--config", sys.argv[3], "--quiet"])
forbidden = sorted(m for m in sys.modules if m.split(".")[0] in ("aiodocker", "aiobotocore"))
print(json.dumps({"rc": rc, "forbidden": forbidden, "modules": len(sys.modules)}))
"""

# Snakefiles: the cheapest faithful formulation of each shape.
# * Several jobs of one rule need distinct outputs for Snakemake to build the DAG, so (a) and (b)
#   use one wildcard rule whose output is declared with touch(): Snakemake creates the empty
#   file itself after `true` exits (no extra shell command), and a target rule `all` asks for
#   all 500 files (a) or for the last link of the chain (b), whose input function names the
#   previous link. These empty marker files are the only files the workflows create.
# * A rule without outputs always runs when it is the target, so (c) is one rule with no
#   input and no output at all.
# * `shell: "true"` runs `true` through bash (Snakemake's shell); aiobatch runs the argv
#   ["true"] directly (no shell), which is how one writes a command in an aiobatch spec.
SNAKEFILE_INDEPENDENT = """\
rule all:
    input: expand("o/{{i}}", i=range({n}))

rule job:
    output: touch("o/{{i}}")
    shell: "true"
"""

SNAKEFILE_CHAIN = """\
wildcard_constraints:
    i=r"\\d+"

rule all:
    input: "o/{last}"

rule job:
    input: lambda wc: [f"o/{{int(wc.i) - 1}}"] if int(wc.i) > 0 else []
    output: touch("o/{{i}}")
    shell: "true"
"""

SNAKEFILE_SINGLE = """\
rule all:
    shell: "true"
"""


# -- helpers ---------------------------------------------------------------------------------


@dataclass
class ProcResult:
    wall_s: float
    returncode: int
    maxrss_kib: int
    stdout: str
    stderr: str
    cpu_s: float = 0.0  # user + system, the process and every descendant it waited for


def run_process(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    capture_stdout: bool = False,
    timeout_s: float = PROCESS_TIMEOUT_S,
) -> ProcResult:
    """Run a whole process; wall clock from spawn to reap, peak RSS and CPU from ``wait4``
    (the CPU of the whole tree: aiobatch's spawner and the instances it reaped included)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out if capture_stdout else subprocess.DEVNULL,
            stderr=err,
        )
        killer = threading.Timer(timeout_s, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ProcResult(
            wall_s=wall,
            returncode=proc.returncode,
            maxrss_kib=usage.ru_maxrss,  # KiB on Linux
            stdout=out.read().decode(errors="replace"),
            stderr=err.read()[-4000:].decode(errors="replace"),
            cpu_s=usage.ru_utime + usage.ru_stime,
        )


def checked(result: ProcResult, what: str) -> ProcResult:
    if result.returncode != 0:
        raise RuntimeError(f"{what}: exit status {result.returncode}\n{result.stderr}")
    return result


@dataclass
class Timing:
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    def as_json(self) -> dict[str, Any]:
        return {"median_s": self.median, "best_s": self.best, "samples_s": self.samples}


def fmt_s(t: Timing | float) -> str:
    if isinstance(t, Timing):
        return f"{fmt_s(t.median)} (best {fmt_s(t.best)})"
    return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"


@contextmanager
def scratch_dir(root: Path, name: str) -> Iterator[Path]:
    """A fresh directory under ``root`` for one measurement.

    It is not removed here but with ``root`` when the whole run ends: deleting thousands of
    files makes the next file creations on ext4 much slower for a while (the inode allocator
    skips recently deleted inodes one by one), which would tax whichever run comes next.
    """
    yield Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))


def aiobatch_cli() -> Path:
    """The ``aiobatch`` console script installed next to this interpreter."""
    candidate = Path(sys.executable).parent / "aiobatch"
    if candidate.exists():
        return candidate
    found = shutil.which("aiobatch")
    if found is None:
        raise SystemExit("bench: the aiobatch command is not installed (run scripts/setup)")
    return Path(found)


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def dir_size_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        total += os.lstat(dirpath).st_blocks * 512
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.reps: int = args.reps if args.reps is not None else (1 if self.quick else 3)
        self.tmp = tmp
        self.report = Report()
        self.cli = aiobatch_cli()
        self.config = tmp / "config.toml"
        self.config.write_text(f"[compute_envs.local]\nslots = {SLOTS}\n")

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def aiobatch_run(self, spec: Path, state_dir: Path) -> ProcResult:
        argv: list[str | Path] = [self.cli, "run", spec, "--state-dir", state_dir]
        return run_process([*argv, "--config", self.config, "--quiet"])

    def aiobatch_tmpfs(self, spec: Path) -> float:
        """``aiobatch run`` with its state dir in memory: the runtime's own cost, without
        the file system's for the dirs and files it makes (see the README on this VM's)."""
        with tempfile.TemporaryDirectory(prefix="aiobatch-bench-", dir=SHM) as state:
            return checked(self.aiobatch_run(spec, Path(state)), "aiobatch run (tmpfs)").wall_s

    def interleaved(self, *runs: Callable[[], float], reps: int | None = None) -> list[Timing]:
        """Repeat each measurement ``reps`` times, alternating them to spread machine noise."""
        samples: list[list[float]] = [[] for _ in runs]
        for _ in range(reps or self.reps):
            for i, run in enumerate(runs):
                samples[i].append(run())
        return [Timing(s) for s in samples]

    # -- 1. many instances of one task --------------------------------------------------------

    def bench_instances(self) -> None:
        n = self.n(2000, 200)
        note(f"1. {n} instances of `true` at {SLOTS} slots: aiobatch run vs plain asyncio")
        spec = write_json(
            self.tmp / f"instances-{n}.json",
            {"name": f"bench-{n}", "tasks": [{"name": "t", "command": ["true"], "instances": n}]},
        )
        persisted: list[dict[str, Any]] = []
        cpu: dict[str, list[float]] = {"aiobatch": [], "baseline": []}

        def aiobatch() -> float:
            with scratch_dir(self.tmp, "state") as state:
                result = checked(self.aiobatch_run(spec, state), "aiobatch run")
                persisted.append(_persisted_counts(state / "aiobatch.db"))
            cpu["aiobatch"].append(result.cpu_s)
            return result.wall_s

        def baseline() -> float:
            argv = [sys.executable, "-c", ASYNCIO_BASELINE, str(n), str(SLOTS)]
            result = checked(run_process(argv), "asyncio baseline")
            cpu["baseline"].append(result.cpu_s)
            return result.wall_s

        # The same run with the state dir in memory: what the runtime costs without the
        # disk's cost of creating a work dir and two log files per instance.
        runs = [aiobatch, baseline] + ([partial(self.aiobatch_tmpfs, spec)] if SHM.is_dir() else [])
        ours, base, *in_memory = self.interleaved(*runs)
        ratio = ours.median / base.median
        last = persisted[-1]
        # Per instance: STAGING, RUNNING, UPLOADING, SUCCEEDED, each an event row.
        self.report.check(
            last["instances"].get("SUCCEEDED") == n and last["events"] >= 4 * n,
            f"1: expected {n} SUCCEEDED instances and >= {4 * n} events, got {last}",
        )
        self.report.sections["instances"] = {
            "instances": n,
            "slots": SLOTS,
            "aiobatch": ours.as_json(),
            "asyncio_baseline": base.as_json(),
            "ratio_median": ratio,
            "ratio_best": ours.best / base.best,
            "aiobatch_instances_per_s": n / ours.median,
            "baseline_instances_per_s": n / base.median,
            "persisted": last,
            "aiobatch_tmpfs_state": in_memory[0].as_json() if in_memory else None,
            "cpu_s": {side: Timing(samples).as_json() for side, samples in cpu.items()},
        }
        self.report.row(
            Row(
                f"1. {n:,} x `true`, 8 slots, whole process",
                f"{fmt_s(ours)}; {n / ours.median:,.0f} inst/s",
                f"asyncio: {fmt_s(base)}; {n / base.median:,.0f} inst/s",
                f"{ratio:.2f}x",
                "<= 1.15x",
                ratio <= 1.15,
            )
        )
        self.report.row(
            Row(
                "1. ... every state change persisted",
                f"{last['events']:,} event rows, {last['instances'].get('SUCCEEDED', 0):,}"
                " instances SUCCEEDED",
            )
        )
        ours_cpu, base_cpu = Timing(cpu["aiobatch"]), Timing(cpu["baseline"])
        self.report.row(
            Row(
                "1. ... CPU of the whole process tree (runtime, spawner, instances)",
                f"{fmt_s(ours_cpu)}",
                f"asyncio: {fmt_s(base_cpu)}",
                f"{ours_cpu.median / base_cpu.median:.2f}x",
            )
        )
        if in_memory:
            self.report.row(
                Row(
                    "1. ... state dir on tmpfs instead of disk",
                    f"{fmt_s(in_memory[0])}; {n / in_memory[0].median:,.0f} inst/s",
                    f"asyncio: {fmt_s(base)}",
                    f"{in_memory[0].median / base.median:.2f}x",
                )
            )

    # -- 7. a chain, and one task, against a sequential loop ----------------------------------

    def bench_chain(self) -> None:
        n = self.n(200, 20)
        note(f"7. a chain of {n} tasks and a 1-task job: aiobatch run vs a sequential loop")
        true = ["true"]
        chain = write_json(
            self.tmp / f"chain-{n}.json",
            {
                "name": "chain",
                "tasks": [
                    {"name": f"t{i}", "command": true, "depends_on": [f"t{i - 1}"] if i else []}
                    for i in range(n)
                ],
            },
        )
        single = write_json(
            self.tmp / "single.json", {"name": "single", "tasks": [{"name": "t", "command": true}]}
        )

        def aiobatch(spec: Path) -> float:
            with scratch_dir(self.tmp, "state") as state:
                return checked(self.aiobatch_run(spec, state), "aiobatch run").wall_s

        def loop(count: int) -> float:
            argv = [sys.executable, "-c", SEQUENTIAL_BASELINE, str(count)]
            return checked(run_process(argv), "sequential baseline").wall_s

        runs = [partial(aiobatch, chain), partial(loop, n), partial(aiobatch, single)]
        runs += [partial(loop, 1)] + ([partial(self.aiobatch_tmpfs, chain)] if SHM.is_dir() else [])
        ours, base, one, one_base, *in_memory = self.interleaved(*runs)
        ratio = ours.median / base.median
        per_hop = (ours.median - one.median) / max(1, n - 1)
        base_hop = (base.median - one_base.median) / max(1, n - 1)
        self.report.sections["chain"] = {
            "tasks": n,
            "aiobatch": ours.as_json(),
            "sequential_baseline": base.as_json(),
            "ratio_median": ratio,
            "per_hop_s": per_hop,
            "baseline_per_hop_s": base_hop,
            "single": one.as_json(),
            "single_baseline": one_base.as_json(),
            "aiobatch_tmpfs_state": in_memory[0].as_json() if in_memory else None,
        }
        self.report.row(
            Row(
                f"7. chain of {n} tasks, whole process",
                f"{fmt_s(ours)}; {per_hop * 1000:.1f} ms per hop",
                f"sequential asyncio loop: {fmt_s(base)}; {base_hop * 1000:.1f} ms per hop",
                f"{ratio:.2f}x",
                "<= 2x",
                ratio <= 2,
            )
        )
        if in_memory:
            self.report.row(
                Row(
                    "7. ... the chain, state dir on tmpfs instead of disk",
                    fmt_s(in_memory[0]),
                    f"sequential asyncio loop: {fmt_s(base)}",
                    f"{in_memory[0].median / base.median:.2f}x",
                )
            )
        self.report.row(
            Row(
                "7. 1-task job, whole process",
                fmt_s(one),
                f"one process from asyncio: {fmt_s(one_base)}",
                f"+{(one.median - one_base.median) * 1000:.0f} ms",
                "< 0.3 s",
                one.median < 0.3,
            )
        )

    # -- 2. Snakemake ---------------------------------------------------------------------------

    def snakemake_bin(self) -> tuple[Path, str]:
        venv = Path(self.args.snakemake_venv)
        if not venv.is_absolute():
            venv = REPO / venv
        exe = venv / "bin" / "snakemake"
        if not exe.exists():
            note(f"creating {venv} and installing snakemake into it (takes a minute)")
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
            subprocess.run([*pip, "install", "--quiet", "snakemake"], check=True)
        version = checked(run_process([exe, "--version"], capture_stdout=True), "snakemake")
        return exe, version.stdout.strip()

    def bench_snakemake(self) -> None:
        exe, version = self.snakemake_bin()
        n_indep, n_chain = self.n(500, 50), self.n(200, 20)
        note(f"2. Snakemake {version} vs aiobatch: {n_indep} independent, chain of {n_chain}, 1")
        true: list[str] = ["true"]
        shapes = {
            "independent": (
                f"(a) {n_indep} independent jobs",
                SNAKEFILE_INDEPENDENT.format(n=n_indep),
                [{"name": f"t{i}", "command": true} for i in range(n_indep)],
                n_indep,
            ),
            "chain": (
                f"(b) chain of {n_chain} dependent jobs",
                SNAKEFILE_CHAIN.format(last=n_chain - 1),
                [
                    {"name": f"t{i}", "command": true, "depends_on": [f"t{i - 1}"] if i else []}
                    for i in range(n_chain)
                ],
                n_chain,
            ),
            "single": ("(c) 1-job workflow", SNAKEFILE_SINGLE, [{"name": "t", "command": true}], 0),
        }

        def snakemake(snakefile: str, outputs: int) -> float:
            with scratch_dir(self.tmp, "snakemake") as work:
                (work / "Snakefile").write_text(snakefile)
                argv: list[str | Path] = [exe, "--snakefile", "Snakefile", "--cores", str(SLOTS)]
                argv += ["--quiet", "all"]
                result = checked(run_process(argv, cwd=work), "snakemake")
                made = len(os.listdir(work / "o")) if outputs else 0
                self.report.check(made == outputs, f"2: snakemake made {made}/{outputs} outputs")
            return result.wall_s

        def aiobatch(spec: Path) -> float:
            with scratch_dir(self.tmp, "state") as state:
                return checked(self.aiobatch_run(spec, state), "aiobatch run").wall_s

        # One untimed run of each tool first: both then start with warm caches.
        snakemake(SNAKEFILE_SINGLE, 0)
        warm = write_json(self.tmp / "warm.json", {"name": "warm", "tasks": shapes["single"][2]})
        aiobatch(warm)

        section: dict[str, Any] = {"snakemake_version": version, "slots": SLOTS}
        for key, (label, snakefile, tasks, outputs) in shapes.items():
            spec = write_json(self.tmp / f"shape-{key}.json", {"name": key, "tasks": tasks})
            ours, theirs = self.interleaved(
                partial(aiobatch, spec), partial(snakemake, snakefile, outputs)
            )
            speedup = theirs.median / ours.median
            section[key] = {
                "jobs": len(tasks),
                "aiobatch": ours.as_json(),
                "snakemake": theirs.as_json(),
                "speedup_median": speedup,
            }
            if key == "single":
                target, met = "aiobatch < 0.3 s end to end", ours.median < 0.3
            else:
                target, met = ">= 5x faster", speedup >= 5
            self.report.row(
                Row(
                    f"2. {label}",
                    fmt_s(ours),
                    f"snakemake: {fmt_s(theirs)}",
                    f"{speedup:.1f}x faster",
                    target,
                    met,
                )
            )
        self.report.sections["snakemake"] = section

    # -- 3. group commit ------------------------------------------------------------------------

    def bench_group_commit(self) -> None:
        n = self.n(6000, 600)
        note(f"3. group commit of {n} InstanceStateChanged events vs one execute per row")
        now = time.time()
        # Distinct instances, so nothing coalesces: the store writes n instance rows + n events.
        events = [
            InstanceStateChanged(
                job_id="20260101000000abcdef", task="t", index=i, attempt=1, state="SUCCEEDED",
                reason=None, ts=now, exit_code=0, pid=10_000 + i, started_at=now - 0.01,
                duration_s=0.01,
            )
            for i in range(n)
        ]  # fmt: skip
        reps = max(self.reps, 5) if not self.quick else 1
        store_s: list[float] = []
        naive_s: list[float] = []
        same_rows_s: list[float] = []
        commits: list[int] = []
        for _ in range(reps):
            with scratch_dir(self.tmp, "db") as d:
                elapsed, count = anyio.run(_time_store, d / "store.db", events)
                store_s.append(elapsed)
                commits.append(count)
                naive_s.append(anyio.run(_time_unbatched, d / "naive.db", events, False))
                same_rows_s.append(anyio.run(_time_unbatched, d / "same.db", events, True))
        ours, naive, same = Timing(store_s), Timing(naive_s), Timing(same_rows_s)
        self.report.sections["group_commit"] = {
            "events": n,
            "store_on_event_to_flush": ours.as_json(),
            "store_commits": commits,
            "baseline_one_execute_per_event_row": naive.as_json(),
            "baseline_same_rows_two_executes_per_event": same.as_json(),
            "ratio_median": ours.median / naive.median,
        }
        self.report.row(
            Row(
                f"3. {n:,} events: on_event + flush()",
                f"{fmt_s(ours)} in {max(commits)} transaction(s)",
                f"{n:,} awaited executes: {fmt_s(naive)}",
                f"{naive.median / ours.median:.1f}x faster",
                "< 100 ms",
                ours.median < 0.1,
            )
        )
        self.report.row(
            Row(
                "3. ... baseline writing the same rows",
                "",
                f"{2 * n:,} awaited executes: {fmt_s(same)}",
                f"{same.median / ours.median:.1f}x faster",
            )
        )

    # -- 4. import time -------------------------------------------------------------------------

    def bench_imports(self) -> None:
        reps = 1 if self.quick else 5
        note("4. import time, and no container/cloud SDK in a local-only run")
        deps = ["anyio", "aiosqlite", "msgspec", "structlog"]

        def probe(*modules: str) -> float:
            argv = [sys.executable, "-c", IMPORT_PROBE, *modules]
            return float(checked(run_process(argv, capture_stdout=True), "import").stdout)

        def process(code: str) -> float:
            return checked(run_process([sys.executable, "-c", code]), "python").wall_s

        ours, theirs, bare, whole = self.interleaved(
            # The package itself imports its names when first used: the runtime is what an
            # embedding program (``from aiobatch import Runtime``) pays for.
            lambda: probe("aiobatch.runtime"),
            lambda: probe(*deps),
            lambda: process("pass"),
            lambda: process("from aiobatch import Runtime"),
            reps=reps,
        )
        top = _importtime_top("aiobatch.runtime", 8)

        with scratch_dir(self.tmp, "state") as state:
            spec = write_json(
                self.tmp / "tiny.json",
                {"name": "tiny", "tasks": [{"name": "t", "command": "true"}]},
            )
            argv: list[str | Path] = [sys.executable, "-c", MODULES_PROBE, spec, state, self.config]
            out = checked(run_process(argv, capture_stdout=True), "modules probe").stdout
        found = json.loads(out.strip().splitlines()[-1])
        installed = [m for m in ("aiodocker", "aiobotocore") if _installed(m)]
        ok = self.report.check(
            found["rc"] == 0 and not found["forbidden"],
            f"4: local-only run imported {found['forbidden']} (rc {found['rc']})",
        )
        self.report.sections["imports"] = {
            "import_aiobatch": ours.as_json(),
            "import_deps_only": theirs.as_json(),
            "deps": deps,
            "process_python_pass": bare.as_json(),
            "process_python_import_aiobatch": whole.as_json(),
            "importtime_top_self_us": top,
            "local_run": {**found, "sdks_installed": installed},
        }
        self.report.row(
            Row(
                "4. `from aiobatch import Runtime`, fresh process",
                fmt_s(ours),
                f"{' + '.join(deps)}: {fmt_s(theirs)}",
                f"{ours.median / theirs.median:.2f}x",
            )
        )
        self.report.row(
            Row(
                "4. ... whole `python -c 'from aiobatch import Runtime'`",
                fmt_s(whole),
                f"`python -c pass`: {fmt_s(bare)}",
                f"+{(whole.median - bare.median) * 1000:.0f} ms",
            )
        )
        sdks = ", ".join(installed) if installed else "neither installed here"
        self.report.row(
            Row(
                "4. local-only run imports no aiodocker/aiobotocore",
                f"imported: {', '.join(found['forbidden']) or 'none'}"
                f" ({found['modules']} modules in all; {sdks})",
                target="none imported",
                met=ok,
            )
        )

    # -- 5. a big DAG up to the first dispatch ----------------------------------------------

    def bench_submit(self) -> None:
        n = self.n(10_000, 1_000)
        spec = _random_dag(n, seed=20240601)
        edges = sum(len(t.get("depends_on", ())) for t in spec["tasks"])
        note(f"5. submit of {n} tasks / {edges} edges until the first dispatch")
        config = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=SLOTS)})
        envs = config.env_kinds()

        def resolve() -> float:
            start = time.perf_counter()
            resolve_spec(spec, compute_envs=envs)
            return time.perf_counter() - start

        submits: list[float] = []
        first_staging: list[float] = []

        def submit() -> float:
            with scratch_dir(self.tmp, "state") as state:
                took, staged = anyio.run(_time_submit, spec, state, config)
            ok = staged is not None and staged <= took
            self.report.check(ok, "5: no instance reached STAGING before submit() returned")
            submits.append(took)
            first_staging.append(staged if staged is not None else float("nan"))
            return took

        resolved, submitted = self.interleaved(resolve, submit)
        staging = Timing(first_staging)
        self.report.sections["submit"] = {
            "tasks": n,
            "edges": edges,
            "resolve_spec": resolved.as_json(),
            "submit": submitted.as_json(),
            "submit_to_first_staging_event": staging.as_json(),
        }
        self.report.row(
            Row(
                f"5. submit {n:,} tasks / {edges:,} edges -> first dispatch",
                f"{fmt_s(submitted)} (STAGING at {fmt_s(staging.median)})",
                f"resolve_spec alone: {fmt_s(resolved)}",
                f"{submitted.median / resolved.median:.1f}x",
                "< 1 s",
                submitted.median < 1.0,
            )
        )

    # -- 6. peak RSS with 100,000 instances ---------------------------------------------------

    def bench_big(self) -> None:
        n = self.n(100_000, 5_000)
        note(f"6. peak RSS of aiobatch run with {n} instances (slow: minutes)")
        spec = write_json(
            self.tmp / f"big-{n}.json",
            {"name": f"big-{n}", "tasks": [{"name": "t", "command": ["true"], "instances": n}]},
        )
        with scratch_dir(self.tmp, "state") as state:
            result = checked(self.aiobatch_run(spec, state), "aiobatch run (big)")
            persisted = _persisted_counts(state / "aiobatch.db")
            state_bytes = dir_size_bytes(state)
        self.report.check(
            persisted["instances"].get("SUCCEEDED") == n,
            f"6: expected {n} SUCCEEDED instances, got {persisted}",
        )
        rss_mib = result.maxrss_kib / 1024
        self.report.sections["big"] = {
            "instances": n,
            "slots": SLOTS,
            "wall_s": result.wall_s,
            "instances_per_s": n / result.wall_s,
            "peak_rss_mib": rss_mib,
            "state_dir_mib": state_bytes / MIB,
            "persisted": persisted,
        }
        self.report.row(
            Row(
                f"6. {n:,} x `true`, peak RSS",
                f"{rss_mib:.0f} MiB; {fmt_s(result.wall_s)}, {n / result.wall_s:,.0f} inst/s",
                "",
                "",
                "< 250 MiB",
                rss_mib < 250,
            )
        )
        self.report.row(
            Row("6. ... state dir left behind", f"{state_bytes / MIB:,.0f} MiB on disk")
        )


# -- in-process pieces (anyio) -------------------------------------------------------------------


def _persisted_counts(db_path: Path) -> dict[str, Any]:
    with sqlite3.connect(db_path) as db:
        states = dict(db.execute("SELECT state, count(*) FROM instances GROUP BY state"))
        (events,) = db.execute("SELECT count(*) FROM events").fetchone()
    db.close()
    return {"instances": states, "events": events}


async def _time_store(path: Path, events: list[InstanceStateChanged]) -> tuple[float, int]:
    """Push the events through a fresh store's bus subscriber; time until all is committed."""
    store = Store(path)
    await store.open()
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(store.run)
            start = time.perf_counter()
            for event in events:
                store.on_event(event)
            await store.flush()
            elapsed = time.perf_counter() - start
            tg.cancel_scope.cancel()
        return elapsed, store.commits
    finally:
        await store.close()


async def _time_unbatched(path: Path, events: list[InstanceStateChanged], same_rows: bool) -> float:
    """One awaited execute per row in one transaction: what writing without a buffer costs."""
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.executescript(f"BEGIN; {SCHEMA} COMMIT;")
        start = time.perf_counter()
        await db.execute("BEGIN")
        for e in events:
            if same_rows:
                row = (e.job_id, e.task, e.index, e.attempt, e.state, e.reason, e.exit_code,
                       e.signal, e.pid, e.started_at, e.ts, e.duration_s, e.lost,
                       e.interrupted)  # fmt: skip
                await db.execute(UPSERT_INSTANCE, row)
            await db.execute(
                "INSERT INTO events (job_id, body) VALUES (?, ?)",
                (e.job_id, event_encoder.encode(e)),
            )
        await db.execute("COMMIT")
        return time.perf_counter() - start


async def _time_submit(
    spec: dict[str, Any], state: Path, config: Config
) -> tuple[float, float | None]:
    """Time ``submit`` of a dict already in memory; also when the first STAGING was published."""
    staged: list[float] = []

    def on_event(event: Event) -> None:
        if not staged and isinstance(event, InstanceStateChanged) and event.state == "STAGING":
            staged.append(time.perf_counter())

    async with Runtime(state, config=config) as rt:
        rt.on_event(on_event)
        start = time.perf_counter()
        job = await rt.submit(spec)
        took = time.perf_counter() - start
        await job.stop()
        await job.wait_for_completion()
    return took, (staged[0] - start if staged else None)


def _random_dag(n: int, seed: int) -> dict[str, Any]:
    """Task i depends on 2 distinct random earlier tasks (task 1 on task 0 only, 0 on none)."""
    rng = random.Random(seed)
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        task: dict[str, Any] = {"name": f"t{i}", "command": ["true"]}
        if i:
            task["depends_on"] = [f"t{j}" for j in rng.sample(range(i), min(2, i))]
        tasks.append(task)
    return {"name": f"dag-{n}", "tasks": tasks}


def _importtime_top(module: str, count: int) -> list[dict[str, Any]]:
    """The modules with the largest self import time, from ``python -X importtime``."""
    result = checked(
        run_process([sys.executable, "-X", "importtime", "-c", f"import {module}"]), ""
    )
    rows: list[dict[str, Any]] = []
    for line in result.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[0].strip().isdigit():
            rows.append(
                {"module": parts[2].strip(), "self_us": int(parts[0]), "cum_us": int(parts[1])}
            )
    return sorted(rows, key=lambda r: -r["self_us"])[:count]


def fs_probe(root: Path, count: int = 300) -> dict[str, float]:
    """Median cost of one mkdir and one file create under ``root``: what each instance's
    work dir and log files cost on this file system right now (it varies with other I/O)."""
    mkdirs: list[float] = []
    creates: list[float] = []
    with scratch_dir(root, "fsprobe") as d:
        for i in range(count):
            start = time.perf_counter()
            os.mkdir(d / str(i))
            middle = time.perf_counter()
            os.close(os.open(d / str(i) / "f", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644))
            mkdirs.append(middle - start)
            creates.append(time.perf_counter() - middle)
    return {
        "mkdir_us": statistics.median(mkdirs) * 1e6,
        "create_us": statistics.median(creates) * 1e6,
    }


# ext4 without a journal (this VM's root) skips, one buffer lookup each, every free inode freed
# in the last 60 s, or 360 s while its inode table block is dirty, when it makes a file or dir.
RECENCY_S = 360.0
CLEANED_MARK = "aiobatch-bench-cleaned"  # in the temp dir: touched when a run removed its files


def settle(temp: Path, wait: bool) -> dict[str, Any]:
    """Wait until RECENCY_S after an earlier run of this benchmark removed its files.

    Every aiobatch instance makes a work dir; the plain loops it is compared with make none.
    A run removes tens of thousands of dirs when it ends, and for minutes after that each new
    inode nearby is found by skipping those: a mkdir costs 5-15 times what it does on a quiet
    file system, and the comparison measures that. A probe of a few hundred mkdirs can miss
    it (it may land in a group with fresh inodes), so the wait is by the clock. Deletions of
    other programs (a test run) are not known here: the mkdir probes before and after tell."""
    mark = temp / CLEANED_MARK
    try:
        since = time.time() - mark.stat().st_mtime
    except FileNotFoundError:
        since = None
    left = RECENCY_S - since if since is not None and wait else 0.0
    if left > 0:
        note(f"an earlier run removed its files {since:.0f} s ago; waiting {left:.0f} s")
        time.sleep(left)
    return {"since_cleanup_s": since, "waited_s": max(left, 0.0)}


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- main -------------------------------------------------------------------------------------

SECTIONS: dict[str, Callable[[Bench], None]] = {
    "1": Bench.bench_instances,
    "2": Bench.bench_snakemake,
    "3": Bench.bench_group_commit,
    "4": Bench.bench_imports,
    "5": Bench.bench_submit,
    "6": Bench.bench_big,
    "7": Bench.bench_chain,
}


def _parser() -> argparse.ArgumentParser:
    parser = bench_parser(__doc__, DEFAULT_JSON_OUT)
    parser.add_argument(
        "--big",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the 100,000-instance peak RSS benchmark (default: on; minutes)",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions per measurement (default 3)")
    parser.add_argument(
        "--only", help="comma-separated sections to run, e.g. 1,3 (default: all)", default=""
    )
    parser.add_argument(
        "--snakemake-venv",
        default=str(DEFAULT_SNAKEMAKE_VENV),
        help=f"venv for snakemake, created if missing (default {DEFAULT_SNAKEMAKE_VENV})",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--settle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"first wait until {RECENCY_S:.0f} s after an earlier run removed its files "
        "(default: on; see settle())",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"bench: unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    if not args.big and "6" in wanted:
        wanted.remove("6")
    configure_logging("json", "warning")  # the in-process Runtime of section 5 stays quiet
    # An installed package has its bytecode compiled (pip does it); an editable checkout
    # run with PYTHONDONTWRITEBYTECODE would compile every module of aiobatch at each start.
    compileall.compile_dir(REPO / "aiobatch", quiet=1)
    out = args.json_out if args.json_out.is_absolute() else REPO / args.json_out
    started = time.time()
    load_before = os.getloadavg()
    temp = Path(tempfile.gettempdir())
    settled = settle(temp, args.settle)
    try:
        with tempfile.TemporaryDirectory(prefix="aiobatch-bench-") as tmp:
            fs_before = fs_probe(Path(tmp))
            bench = Bench(args, Path(tmp))
            for key in wanted:
                SECTIONS[key](bench)
            fs_after = fs_probe(Path(tmp))
    finally:  # its files are removed however the run ended: the next run waits for that
        with contextlib.suppress(OSError):  # another user's mark: that run's wait is lost
            (temp / CLEANED_MARK).touch()
    fs = [f"{f['mkdir_us']:.0f}/{f['create_us']:.0f} us" for f in (fs_before, fs_after)]
    since = settled["since_cleanup_s"]
    if since is None:
        waited = ""
    else:
        waited = f"; begun {since + settled['waited_s']:.0f} s after an earlier run's cleanup"
    return bench.report.finish(
        out,
        started=started,
        load_before=load_before,
        strict=args.strict,
        fields={"quick": args.quick, "reps": bench.reps, "sections_run": wanted},
        machine={"tmp_fs_settle": settled, "tmp_fs_before": fs_before, "tmp_fs_after": fs_after},
        summary=f"; one mkdir/file create in the temp dir before/after: {fs[0]} / {fs[1]}{waited}",
    )


if __name__ == "__main__":
    sys.exit(main())
