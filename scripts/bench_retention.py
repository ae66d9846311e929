#!/usr/bin/env python3
"""Retention under load: deleting 10,000 ended jobs while a 2,000-instance job runs.

    .venv/bin/python scripts/bench_retention.py [--quick] [--reps 5] [--jobs 10000]
        [--instances 2000] [--strict] [--json-out PATH]

A state dir holding N ended jobs (10,000; ``--quick``: 1,000) is made once, for real: N
one-instance ``true`` jobs submitted to a Runtime with 64 local slots, each leaving its rows,
events, work dir and logs as any job does. Each run gets a whole copy of it (aiobatch.db,
work/, logs/ and the rest; untimed, then ``sync``), opens a Runtime on it in this process,
and times one job of M instances of ``true`` (2,000; ``--quick``: 200) at 8 local slots from
``submit`` to the end of ``wait_for_completion``:

A. ``[retention] succeeded = "1s"``: every one of the N jobs is due from the start, and the
   runtime deletes them (50 per transaction, then their files) while the job runs; the
   runtime stays open after the job until every job is gone (the timed one too).
B. the same job on a copy of the same state dir without ``[retention]``: nothing is deleted.

After one untimed run of B, the runs go A B, B A, A B, ... (5 reps; ``--quick``: 1), so that
neither always follows the other (a run after A's deletion of 3N files and dirs may find
the file system busier). Target (the issue's): A / B < 1.10, medians. Each rep's own A / B
is reported too, and the CPU time of the event loop's thread and of the whole process
during the job: on a busy machine the wall times move more than deletion costs.

In process, not ``aiobatch run`` processes: the target is about the job, and a whole process
would add start-up work that A and B share (the database check, recovery, the start's scan
for orphan dirs), diluting the ratio towards 1; in process the runtime's ``on_event`` also
shows when each instance started, so stalls in dispatch can be seen. A thread samples the
database every 0.1 s through its own read-only connection (rows left of the N jobs, the
sizes of aiobatch.db and its -wal) in A and B alike; from it come the deletion progress and
the time until every row of the N is gone.

Checks (exit 1): the made state dir holds N SUCCEEDED jobs with their dirs; every timed job
SUCCEEDED with all M instances; in A some of the N are deleted while the job runs, and all
of them (rows and their work and log dirs) within 10 minutes of the start; in B none is.
Reported: A and B (median, best), A / B, how many of the N were deleted when A's job ended,
the time until all were, the deletion rate during and after the job, the database and WAL
sizes, the largest gap between two instance starts. Markdown table to stdout, progress to
stderr, everything to ``--json-out`` (default bench-results/retention.json). With
``--strict``, exit 1 also when the target is missed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from bench import Timing, dir_size_bytes, fmt_s, fs_probe, scratch_dir
from benchreport import Report, Row, bench_parser, note, positive

from aiobatch.api import JobHandle
from aiobatch.config import ComputeEnvConfig, Config, RetentionConfig
from aiobatch.events import Event, InstanceStateChanged
from aiobatch.logging import configure_logging
from aiobatch.runtime import Runtime

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON_OUT = Path("bench-results") / "retention.json"  # relative to the repo root
SLOTS = 8  # the timed job's, as in bench.py's 2,000 x `true`
BUILD_SLOTS = 64  # making the ended jobs: only their count matters
# Jobs submitted at once while making them; fewer than the runtime keeps of ended jobs in
# memory (queries.ARCHIVE_SIZE, 256): a wait for a job that has left it reads the store,
# which may not have committed its end yet, and then waits forever.
SUBMIT_CHUNK = 200
AGE = "1s"  # A's retention: every ended job of the copy is due at once
TARGET_RATIO = 1.10  # A / B
SAMPLE_S = 0.1
DELETE_LIMIT_S = 600.0  # all N deleted within this of the runtime's start, or a failed check
MIB = 1024 * 1024
TRUE = ["true"]


@dataclass
class Sample:
    t: float  # seconds since the runtime was open
    old_jobs: int  # of the N made jobs, those whose row is still there
    jobs: int  # every job's row (the timed one too)
    db_bytes: int
    wal_bytes: int


@dataclass
class RunResult:
    key: str
    job_s: float  # submit -> end of wait_for_completion
    job_end_s: float  # from the runtime's start (the sampler's origin) to the job's end
    loop_cpu_s: float  # CPU time of the event loop's thread during the job
    process_cpu_s: float  # of this whole process (the database's and file removal's threads)
    open_s: float  # Runtime.__aenter__ (recovery, the start's scan for orphan dirs)
    status: str
    succeeded: int
    old_rows_at_end: int  # of the N, rows left when the job ended
    old_dirs_at_end: int  # of the N, jobs with a work or log dir left just after
    rows_gone_s: float | None  # from the runtime's start: the first sample without any of the N
    old_rows_after: int  # once the runtime closed
    old_dirs_after: int
    db_bytes_before: int
    wal_bytes_before: int
    db_bytes_after: int  # once the runtime closed (its last connection checkpoints)
    wal_bytes_after: int
    db_bytes_peak: int
    wal_bytes_peak: int
    first_start_s: float  # submit -> first instance RUNNING
    start_gap_max_s: float  # the largest gap between two instance starts
    start_gap_p99_s: float
    samples: list[Sample] = field(default_factory=list)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _wal(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + "-wal")


def read_only(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, check_same_thread=False)


def count_jobs(db: sqlite3.Connection, max_old_seq: int) -> tuple[int, int]:
    """(jobs of the made ones left, every job)."""
    query = "SELECT count(*) FILTER (WHERE seq <= ?), count(*) FROM jobs"
    old, every = db.execute(query, (max_old_seq,)).fetchone()
    return int(old), int(every)


class Sampler:
    """Reads the database on a thread and connection of its own every SAMPLE_S."""

    def __init__(self, db_path: Path, max_old_seq: int) -> None:
        self.db_path = db_path
        self.max_old_seq = max_old_seq
        self.samples: list[Sample] = []
        self.origin = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        db = read_only(self.db_path)
        try:
            while not self._stop.is_set():
                old, every = count_jobs(db, self.max_old_seq)
                self.samples.append(
                    Sample(
                        t=time.perf_counter() - self.origin,
                        old_jobs=old,
                        jobs=every,
                        db_bytes=_size(self.db_path),
                        wal_bytes=_size(_wal(self.db_path)),
                    )
                )
                self._stop.wait(SAMPLE_S)
        finally:
            db.close()

    def rows_gone_s(self) -> float | None:
        """When the first sample without any of the N jobs' rows was taken."""
        return next((s.t for s in self.samples if s.old_jobs == 0), None)

    async def until(self, done: Callable[[Sample], bool], limit_s: float) -> bool:
        """Whether ``done(latest sample)`` came true within ``limit_s`` of the origin."""
        while time.perf_counter() - self.origin < limit_s:
            if self.samples and done(self.samples[-1]):
                return True
            await anyio.sleep(SAMPLE_S)  # a deletion publishes no event to wait on
        return False


def job_dirs(state: Path, ids: frozenset[str]) -> int:
    """Of ``ids``, the jobs with a work or a log dir left."""
    left: set[str] = set()
    for top in ("work", "logs"):
        try:
            left.update(name for name in os.listdir(state / top) if name in ids)
        except FileNotFoundError:
            pass
    return len(left)


def local_config(slots: int, retention: RetentionConfig | None = None) -> Config:
    return Config(
        compute_envs={"local": ComputeEnvConfig(kind="local", slots=slots)},
        retention=retention or RetentionConfig(),
    )


async def make_ended_jobs(state: Path, count: int) -> None:
    """``count`` one-instance ``true`` jobs, run to their end by a real runtime."""
    spec = {"name": "ended", "tasks": [{"name": "t", "command": TRUE}]}
    async with Runtime(state, config=local_config(BUILD_SLOTS)) as rt:
        made = 0
        while made < count:
            handles: list[JobHandle] = []

            async def submit(into: list[JobHandle] = handles) -> None:
                into.append(await rt.submit(spec))

            async with anyio.create_task_group() as tg:
                for _ in range(min(SUBMIT_CHUNK, count - made)):
                    tg.start_soon(submit)
            for handle in handles:
                await handle.wait_for_completion()
            made += len(handles)
            note(f"made {made:,} of {count:,} ended jobs")


def read_made(state: Path) -> tuple[dict[str, int], frozenset[str], int]:
    """The made state dir: its jobs by state, their ids, the largest seq."""
    db = read_only(state / "aiobatch.db")
    try:
        states = dict(db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        ids = frozenset(row[0] for row in db.execute("SELECT id FROM jobs"))
        (max_seq,) = db.execute("SELECT max(seq) FROM jobs").fetchone()
    finally:
        db.close()
    return states, ids, int(max_seq or 0)


async def timed_run(
    key: str, state: Path, *, instances: int, retention: bool, made: frozenset[str], max_seq: int
) -> RunResult:
    """One Runtime on ``state``: the timed job, and in A the deletions to their end."""
    task = {"name": "t", "command": TRUE, "instances": instances}
    spec = {"name": f"timed-{key}", "tasks": [task]}
    config = local_config(SLOTS, RetentionConfig(succeeded=AGE) if retention else None)
    db_path = state / "aiobatch.db"
    db_before, wal_before = _size(db_path), _size(_wal(db_path))
    starts: list[float] = []

    def on_event(event: Event) -> None:
        # The made jobs have all ended: every instance that starts is the timed job's.
        if isinstance(event, InstanceStateChanged) and event.state == "RUNNING":
            starts.append(time.perf_counter())

    opening = time.perf_counter()
    async with Runtime(state, config=config) as rt:
        open_s = time.perf_counter() - opening
        rt.on_event(on_event)
        with Sampler(db_path, max_seq) as sampler:
            cpu = time.thread_time(), _process_cpu()
            start = time.perf_counter()
            job = await rt.submit(spec)
            snapshot = await job.wait_for_completion()
            job_s = time.perf_counter() - start
            loop_cpu_s, process_cpu_s = time.thread_time() - cpu[0], _process_cpu() - cpu[1]
            job_end_s = time.perf_counter() - sampler.origin
            db = read_only(db_path)
            try:
                rows_at_end, _ = count_jobs(db, max_seq)
            finally:
                db.close()
            dirs_at_end = job_dirs(state, made)
            if retention:  # every row gone, the timed job's too (it is due a second after)
                await sampler.until(lambda s: s.jobs == 0, DELETE_LIMIT_S)
    db = read_only(db_path)
    try:
        rows_after, _ = count_jobs(db, max_seq)
    finally:
        db.close()
    gaps = sorted(b - a for a, b in itertools.pairwise(starts)) or [0.0]
    samples = sampler.samples
    timed = snapshot.tasks.get("t")
    return RunResult(
        key=key,
        job_s=job_s,
        job_end_s=job_end_s,
        loop_cpu_s=loop_cpu_s,
        process_cpu_s=process_cpu_s,
        open_s=open_s,
        status=snapshot.status,
        succeeded=timed.succeeded if timed is not None else 0,
        old_rows_at_end=rows_at_end,
        old_dirs_at_end=dirs_at_end,
        rows_gone_s=sampler.rows_gone_s(),
        old_rows_after=rows_after,
        old_dirs_after=job_dirs(state, made),
        db_bytes_before=db_before,
        wal_bytes_before=wal_before,
        db_bytes_after=_size(db_path),
        wal_bytes_after=_size(_wal(db_path)),
        db_bytes_peak=max([db_before, *(s.db_bytes for s in samples)]),
        wal_bytes_peak=max([wal_before, *(s.wal_bytes for s in samples)]),
        first_start_s=(starts[0] - start) if starts else float("nan"),
        start_gap_max_s=gaps[-1],
        start_gap_p99_s=gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))],
        samples=samples,
    )


def mib(n: float) -> str:
    return f"{n / MIB:,.1f} MiB"


class RetentionBench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.quick: bool = args.quick
        self.reps: int = args.reps if args.reps is not None else (1 if self.quick else 5)
        self.jobs: int = args.jobs if args.jobs is not None else (1_000 if self.quick else 10_000)
        self.n: int = (
            args.instances if args.instances is not None else (200 if self.quick else 2_000)
        )
        self.tmp = tmp
        self.report = Report()
        self.runs: list[RunResult] = []
        self.made_info: dict[str, Any] = {}

    def make(self) -> tuple[Path, frozenset[str], int]:
        made = self.tmp / "made"
        note(f"making {self.jobs:,} ended jobs (one `true` instance each, {BUILD_SLOTS} slots)")
        started = time.perf_counter()
        anyio.run(make_ended_jobs, made, self.jobs)
        took = time.perf_counter() - started
        states, ids, max_seq = read_made(made)
        dirs = job_dirs(made, ids)
        self.report.check(
            states == {"SUCCEEDED": self.jobs} and dirs == self.jobs,
            f"made state dir: jobs {states}, {dirs} with dirs; expected {self.jobs} SUCCEEDED",
        )
        files = sum(len(names) for _, _, names in os.walk(made))
        db_path = made / "aiobatch.db"
        self.made_info = {
            "jobs": states,
            "made_in_s": took,
            "state_dir_bytes_on_disk": dir_size_bytes(made),
            "files": files,
            "db_bytes": _size(db_path),
            "wal_bytes": _size(_wal(db_path)),
        }
        note(f"made in {fmt_s(took)}: {files:,} files, database {mib(_size(db_path))}")
        return made, ids, max_seq

    def run(self, key: str, made: Path, ids: frozenset[str], max_seq: int) -> RunResult:
        with scratch_dir(self.tmp, f"state-{key}") as parent:
            state = parent / "state"
            shutil.copytree(made, state, symlinks=True)
            os.sync()  # the copy's writes land now, not during the run
            result = anyio.run(
                partial(
                    timed_run,
                    key,
                    state,
                    instances=self.n,
                    retention=key == "A",
                    made=ids,
                    max_seq=max_seq,
                )
            )
        ok = self.report.check(
            result.status == "SUCCEEDED" and result.succeeded == self.n,
            f"{key}: job {result.status}, {result.succeeded} of {self.n} instances SUCCEEDED",
        )
        if key == "A":
            ok &= self.report.check(
                result.old_rows_at_end < self.jobs,
                "A: none of the ended jobs was deleted while the job ran",
            )
            ok &= self.report.check(
                result.old_rows_after == 0 and result.old_dirs_after == 0,
                f"A: {result.old_rows_after} rows and {result.old_dirs_after} jobs' dirs of the "
                f"{self.jobs} ended jobs left {DELETE_LIMIT_S:.0f} s after the start",
            )
        else:
            ok &= self.report.check(
                result.old_rows_after == self.jobs and result.old_dirs_after == self.jobs,
                f"{key}: without retention {result.old_rows_after} rows and "
                f"{result.old_dirs_after} jobs' dirs of {self.jobs} are left",
            )
        self.runs.append(result)
        left = f", {result.old_dirs_at_end:,} of the ended jobs left at its end" * (key == "A")
        note(f"{key}: job {fmt_s(result.job_s)}{left}{'' if ok else ' FAILED'}")
        return result

    def measure(self) -> None:
        made, ids, max_seq = self.make()
        note(f"{self.n} x `true` at {SLOTS} slots, {self.reps} rep(s) of A and B; one B untimed")
        self.run("warm-up", made, ids, max_seq)
        results: dict[str, list[RunResult]] = {"A": [], "B": []}
        for rep in range(self.reps):
            for key in "AB" if rep % 2 == 0 else "BA":
                results[key].append(self.run(key, made, ids, max_seq))
        self.tabulate(results["A"], results["B"])

    def tabulate(self, a_runs: list[RunResult], b_runs: list[RunResult]) -> None:
        a, b = Timing([r.job_s for r in a_runs]), Timing([r.job_s for r in b_runs])
        ratio = a.median / b.median
        # Each rep's A and B ran one after the other: their ratio shares the machine's mood.
        paired = [ra.job_s / rb.job_s for ra, rb in zip(a_runs, b_runs, strict=True)]
        loop = [Timing([r.loop_cpu_s for r in runs]) for runs in (a_runs, b_runs)]
        process = [Timing([r.process_cpu_s for r in runs]) for runs in (a_runs, b_runs)]
        self.report.sections["retention"] = {
            "ended_jobs": self.jobs,
            "instances": self.n,
            "slots": SLOTS,
            "age": AGE,
            "made": self.made_info,
            "A_with_deletions": a.as_json(),
            "B_without": b.as_json(),
            "ratio_median": ratio,
            "ratio_best": a.best / b.best,
            "ratio_per_rep": paired,
            "loop_cpu_A_B": [t.as_json() for t in loop],
            "process_cpu_A_B": [t.as_json() for t in process],
            "A_deleted_when_job_ended": [self.jobs - r.old_dirs_at_end for r in a_runs],
            "A_all_rows_gone_s": [r.rows_gone_s for r in a_runs],
            "runs": [asdict(r) for r in self.runs],
        }
        self.report.row(
            Row(
                f"A. {self.n:,} x `true`, {SLOTS} slots, while {self.jobs:,} ended jobs are "
                "deleted: submit -> end",
                fmt_s(a),
                f"B, nothing deleted: {fmt_s(b)}",
                f"{ratio:.2f}x (best {a.best / b.best:.2f}x)",
                f"< {TARGET_RATIO:.2f}x",
                ratio < TARGET_RATIO,
            )
        )
        self.report.row(
            Row(
                "A / B, each rep (adjacent runs)",
                ", ".join(f"{x:.2f}x" for x in paired),
                ratio=f"median {statistics.median(paired):.2f}x",
            )
        )
        for what, (ta, tb) in (("event loop's thread", loop), ("whole process", process)):
            self.report.row(
                Row(
                    f"CPU time during the job, {what}",
                    fmt_s(ta),
                    f"B: {fmt_s(tb)}",
                    f"{ta.median / tb.median:.2f}x",
                )
            )
        self.deletion_rows(a_runs, b_runs)

    def deletion_rows(self, a_runs: list[RunResult], b_runs: list[RunResult]) -> None:
        jobs = self.jobs
        self.report.row(
            Row(
                f"A: of the {jobs:,}, deleted (rows and dirs) when the job ended",
                ", ".join(f"{jobs - r.old_dirs_at_end:,}" for r in a_runs)
                + f" (rows left: {', '.join(f'{r.old_rows_at_end:,}' for r in a_runs)})",
            )
        )
        gone = [r.rows_gone_s for r in a_runs if r.rows_gone_s is not None]
        if gone:
            self.report.row(
                Row(
                    f"A: every row of the {jobs:,} gone, from the runtime's start",
                    fmt_s(Timing(gone)),
                    f"A's job: {fmt_s(statistics.median(r.job_s for r in a_runs))}",
                    f"{jobs / statistics.median(gone):,.0f} jobs/s",
                )
            )
        during = [(jobs - r.old_rows_at_end) / r.job_end_s for r in a_runs]
        after = [
            r.old_rows_at_end / (r.rows_gone_s - r.job_end_s)
            for r in a_runs
            if r.rows_gone_s is not None and r.rows_gone_s > r.job_end_s
        ]
        self.report.row(
            Row(
                "A: rows deleted per second while the job ran; after it",
                f"{statistics.median(during):,.0f} jobs/s; "
                + (f"{statistics.median(after):,.0f} jobs/s" if after else "none left after"),
            )
        )
        last = a_runs[-1]
        self.report.row(
            Row(
                "A: aiobatch.db before -> after (peak during); -wal peak",
                f"{mib(last.db_bytes_before)} -> {mib(last.db_bytes_after)} "
                f"({mib(last.db_bytes_peak)}); {mib(last.wal_bytes_peak)}",
                f"B: {mib(b_runs[-1].db_bytes_after)}; -wal peak {mib(b_runs[-1].wal_bytes_peak)}",
            )
        )
        gaps = [Timing([r.start_gap_max_s for r in runs]) for runs in (a_runs, b_runs)]
        p99 = [statistics.median(r.start_gap_p99_s for r in runs) for runs in (a_runs, b_runs)]
        self.report.row(
            Row(
                "largest gap between two instance starts (median p99)",
                f"{fmt_s(gaps[0])} ({fmt_s(p99[0])})",
                f"B: {fmt_s(gaps[1])} ({fmt_s(p99[1])})",
            )
        )
        self.report.row(
            Row(
                "Runtime open (recovery, scan of the ended jobs' dirs)",
                fmt_s(Timing([r.open_s for r in a_runs])),
                f"B: {fmt_s(Timing([r.open_s for r in b_runs]))}",
            )
        )
        info = self.made_info
        self.report.row(
            Row(
                f"making the {jobs:,} ended jobs (untimed setup)",
                f"{fmt_s(info['made_in_s'])}; {info['files']:,} files, "
                f"{mib(info['state_dir_bytes_on_disk'])} on disk, database {mib(info['db_bytes'])}",
            )
        )


def _parser() -> argparse.ArgumentParser:
    parser = bench_parser(__doc__, DEFAULT_JSON_OUT)
    parser.add_argument(
        "--quick", action="store_true", help="1,000 ended jobs, 200 instances, one repetition"
    )
    parser.add_argument("--reps", type=positive, help="repetitions of A and B (default 5)")
    parser.add_argument("--jobs", type=positive, help="ended jobs to delete (default 10,000)")
    parser.add_argument("--instances", type=positive, help="the timed job's (default 2,000)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("json", "warning")  # the in-process runtimes stay quiet
    out = args.json_out if args.json_out.is_absolute() else REPO / args.json_out
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="aiobatch-bench-") as tmp:
        fs_before = fs_probe(Path(tmp))
        bench = RetentionBench(args, Path(tmp))
        bench.measure()
        fs_after = fs_probe(Path(tmp))
        note("removing the state dirs")
    return bench.report.finish(
        out,
        started=started,
        load_before=load_before,
        strict=args.strict,
        baseline="Baseline, same run",
        fields={"quick": args.quick, "reps": bench.reps},
        machine={"tmp_fs_before": fs_before, "tmp_fs_after": fs_after},
    )


if __name__ == "__main__":
    sys.exit(main())
