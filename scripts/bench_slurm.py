#!/usr/bin/env python3
"""A task of 200 instances of ``true`` on a Slurm env vs a plain ``sbatch --array`` of 200.

    eval "$(scripts/slurm-cluster env)"
    .venv/bin/python scripts/bench_slurm.py [--quick] [--reps 3] [--instances 200]
        [--partition aiobatch] [--strict] [--json-out PATH]

Against the cluster ``$SLURM_CONF`` names (``scripts/slurm-cluster up`` starts one), in the
same run, interleaved P02, A02, P1, A1, P02, ...:

P02, P1. the plain array: ``sbatch --parsable --array=0-(N-1) --wrap true`` (same partition,
   output to /dev/null), then ``squeue -h -j ID`` every 0.2 s (P02) or 1 s (P1) until none of
   its elements remains; wall time from before sbatch starts to the first empty answer.
A02, A1. ``aiobatch run --quiet`` as a whole process (start-up and exit included) of one task
   of N instances of ``true`` on ``[compute_envs.slurm] kind = "slurm"`` with N slots (one
   array), ``poll = "0.2s"`` (A02) or aiobatch's default ``poll = "1s"`` (A1).

Both intervals, because on the test cluster the interval is not only how late an end is
seen: a quiet controller starts about 8 elements a second there (one scheduling pass a
second, 8 CPUs), and the array runs faster while the controller answers more requests
(``squeue`` every 0.2 s rather than 1 s, other users' tests), so both arms' wall times swing
with what else talks to it. Each aiobatch arm is compared with the plain array polled as
often (A02/P02, A1/P1), interleaved; A1/P02 is shown too.

aiobatch's CPU: user + system time of the whole process from ``wait4`` (its Slurm commands,
which it reaps, included) over its wall time: the share of one core. While it runs, the
bench samples ``/proc/PID/stat`` every 0.1 s, which gives the share while it waits: from its
first STAGING event (dispatch) to its last SUCCEEDED, its own and with its reaped children.
Targets (the issue's): within 1.2x of the plain array (medians); aiobatch under 10% of one
core while it waits.

Each run is checked: the job SUCCEEDED with all N instances, its elements all COMPLETED in
jobcomp/filetxt's file, as one array (one submission). Where the time goes, from the stored
events' timestamps against Slurm's own start and end times (jobcomp, whole seconds):
process start -> first STAGING, Slurm's end of each element -> its SUCCEEDED, the last
SUCCEEDED -> exit; for the plain array, the last element's end -> the empty squeue. How many
jobs were in the queue when each run started is recorded (the cluster may be shared).
Markdown table to stdout, progress to stderr, everything to ``--json-out`` (default
bench-results/slurm.json). Exit status: 0, or 1 when a run or a check failed (or, with
``--strict``, a target was missed).
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import Timing, aiobatch_cli, fmt_s, scratch_dir, write_json
from benchreport import Report, Row, bench_parser, note, positive

from aiobatch.events import InstanceStateChanged, event_decoder

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON_OUT = Path("bench-results") / "slurm.json"  # relative to the repo root
TARGET_RATIO = 1.2
TARGET_CPU_SHARE = 0.10
SAMPLE_S = 0.1
RUN_LIMIT_S = 600.0
JOBCOMP_LIMIT_S = 30.0  # for jobcomp to hold every element's end once squeue is done
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
# Each arm and its squeue interval (s), run in this order each repetition.
ARMS = {"P02": 0.2, "A02": 0.2, "P1": 1.0, "A1": 1.0}
PAIRS = (("A02", "P02"), ("A1", "P1"))


def slurm(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def queued_now() -> int:
    """Jobs in the queue (each running element, a pending array's rest as one): others'."""
    return len(slurm("squeue", "-h", "-o", "%i").splitlines())


def slurm_epoch(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def jobcomp_path() -> Path:
    config = slurm("scontrol", "show", "config")
    match = re.search(r"^JobCompLoc\s*=\s*(\S+)", config, re.MULTILINE)
    if not match or "jobcomp/filetxt" not in config:
        raise SystemExit(
            "bench: the cluster must write jobcomp/filetxt (see scripts/slurm-cluster)"
        )
    return Path(match.group(1))


def jobcomp_elements(path: Path, *, array: str = "", name_prefix: str = "") -> list[dict[str, str]]:
    """jobcomp's records of one array (by id) or of the jobs whose names start so."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if (array and fields.get("ArrayJobId") == array) or (
            name_prefix and fields.get("Name", "").startswith(name_prefix)
        ):
            found.append(fields)
    return found


def wait_jobcomp(path: Path, count: int, **which: str) -> list[dict[str, str]]:
    """Once ``count`` records are there (the controller writes them as elements end)."""
    deadline = time.monotonic() + JOBCOMP_LIMIT_S
    while len(records := jobcomp_elements(path, **which)) < count:
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return records


def slurm_span(records: list[dict[str, str]]) -> dict[str, float]:
    starts = [slurm_epoch(r["StartTime"]) for r in records]
    ends = [slurm_epoch(r["EndTime"]) for r in records]
    submit = min(slurm_epoch(r["SubmitTime"]) for r in records)
    return {"submit": submit, "first_start": min(starts), "last_end": max(ends)}


# -- a whole process, its CPU sampled ---------------------------------------------------------


@dataclass
class Sampled:
    wall_s: float
    started_at: float  # epoch, just before the spawn
    returncode: int
    cpu_s: float  # user + system, the process and the children it reaped (wait4)
    stderr: str
    # (epoch, own CPU s, own + reaped children's CPU s), every SAMPLE_S while it ran
    samples: list[tuple[float, float, float]] = field(default_factory=list)

    def share_between(self, start: float, end: float) -> tuple[float, float] | None:
        """Share of a core from ``start`` to ``end`` (epoch): own, and with its children."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 1.0:
            return None
        (t0, own0, all0), (t1, own1, all1) = inside[0], inside[-1]
        return (own1 - own0) / (t1 - t0), (all1 - all0) / (t1 - t0)


def _cpu_of(pid: int) -> tuple[float, float] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    own = (utime + stime) * TICK_S
    return own, own + (cutime + cstime) * TICK_S


def run_sampled(argv: Sequence[str | Path]) -> Sampled:
    with tempfile.TemporaryFile() as err:
        started_at, start = time.time(), time.perf_counter()
        proc = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
        )
        samples: list[tuple[float, float, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_S):
                cpu = _cpu_of(proc.pid)
                if cpu is not None:
                    samples.append((time.time(), *cpu))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        killer = threading.Timer(RUN_LIMIT_S, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            done.set()
        wall = time.perf_counter() - start
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return Sampled(
            wall_s=wall,
            started_at=started_at,
            returncode=proc.returncode,
            cpu_s=usage.ru_utime + usage.ru_stime,
            stderr=err.read()[-4000:].decode(errors="replace"),
            samples=samples,
        )


def read_history(db_path: Path) -> tuple[str, str, dict[int, dict[str, float]]]:
    """The job's id and state, and each instance's first ts per state."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        [(job_id, job_state)] = db.execute("SELECT id, state FROM jobs").fetchall()
        history: dict[int, dict[str, float]] = {}
        for (body,) in db.execute("SELECT body FROM events ORDER BY seq"):
            event = event_decoder.decode(body)
            if isinstance(event, InstanceStateChanged):
                history.setdefault(event.index, {}).setdefault(event.state, event.ts)
    finally:
        db.close()
    return job_id, job_state, history


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


class SlurmBench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.quick: bool = args.quick
        self.reps: int = args.reps if args.reps is not None else (1 if self.quick else 3)
        self.n: int = args.instances if args.instances is not None else (50 if self.quick else 200)
        self.partition: str = args.partition
        self.tmp = tmp
        self.report = Report()
        self.cli = aiobatch_cli()
        self.jobcomp = jobcomp_path()
        self.spec = write_json(
            tmp / "spec.json",
            {
                "name": "bench-slurm",
                "tasks": [
                    {"name": "t", "compute_env": "slurm", "command": ["true"], "instances": self.n}
                ],
            },
        )
        self.configs = {key: tmp / f"{key}.toml" for key in ARMS if key.startswith("A")}
        for key, path in self.configs.items():
            path.write_text(
                f'[compute_envs.slurm]\nkind = "slurm"\npartition = "{self.partition}"\n'
                f'slots = {max(200, self.n)}\npoll = "{ARMS[key]}s"\n'
            )
        self.runs: dict[str, list[dict[str, Any]]] = {key: [] for key in ARMS}

    # -- P: the plain array --------------------------------------------------------------------

    def plain(self, poll_s: float) -> dict[str, Any]:
        name = f"bench-plain-{uuid.uuid4().hex[:8]}"
        busy = queued_now()
        started_at, start = time.time(), time.perf_counter()
        array = slurm(
            *("sbatch", "--parsable", f"--array=0-{self.n - 1}", f"--partition={self.partition}"),
            *(f"--job-name={name}", "--output=/dev/null", "--chdir=/", "--wrap", "true"),
        ).strip().split(";")[0]  # fmt: skip
        polls = 0
        while True:
            polls += 1
            done = subprocess.run(
                ["squeue", "-h", "-j", array, "-o", "%i"], capture_output=True, text=True
            )
            # Forgotten already ("Invalid job id") is gone too.
            if not done.stdout.strip():
                break
            time.sleep(poll_s)
        wall = time.perf_counter() - start
        seen_gone = time.time()
        records = wait_jobcomp(self.jobcomp, self.n, array=array)
        ok = self.report.check(
            len(records) == self.n and {r["JobState"] for r in records} == {"COMPLETED"},
            f"plain array {array}: {len(records)} jobcomp records, states "
            f"{sorted({r['JobState'] for r in records})}",
        )
        run: dict[str, Any] = {"wall_s": wall, "ok": ok, "array": array, "squeue_calls": polls}
        run["queued_at_start"] = busy
        if records:
            span = slurm_span(records)
            run["submit_to_last_slurm_end_s"] = span["last_end"] - started_at
            run["last_slurm_end_to_seen_gone_s"] = seen_gone - span["last_end"]
            run["slurm_first_start_to_last_end_s"] = span["last_end"] - span["first_start"]
        note(f"P{poll_s:g}: {fmt_s(wall)}{'' if ok else ' FAILED'} (queued at start: {busy})")
        return run

    # -- A: aiobatch run -----------------------------------------------------------------------

    def aiobatch(self, key: str) -> dict[str, Any]:
        busy = queued_now()
        with scratch_dir(self.tmp, f"state-{key}") as state:
            argv: list[str | Path] = [self.cli, "run", self.spec, "--state-dir", state]
            result = run_sampled([*argv, "--config", self.configs[key], "--quiet"])
            job_id, job_state, history = read_history(state / "aiobatch.db")
            runtime_id = (state / "runtime-id").read_text().strip()
        prefix = f"aiobatch.{runtime_id}.{job_id}."
        records = wait_jobcomp(self.jobcomp, self.n, name_prefix=prefix)
        succeeded = sum(1 for h in history.values() if "SUCCEEDED" in h)
        arrays = {r["ArrayJobId"] for r in records}
        ok = self.report.check(
            result.returncode == 0
            and job_state == "SUCCEEDED"
            and succeeded == self.n
            and len(records) == self.n
            and {r["JobState"] for r in records} == {"COMPLETED"}
            and len(arrays) == 1,
            f"{key}: exit {result.returncode}, job {job_state}, {succeeded} SUCCEEDED, "
            f"{len(records)} jobcomp records in arrays {sorted(arrays)}\n{result.stderr}",
        )
        run: dict[str, Any] = {
            "wall_s": result.wall_s,
            "ok": ok,
            "cpu_s": result.cpu_s,
            "cpu_share": result.cpu_s / result.wall_s,
            "queued_at_start": busy,
            "arrays": sorted(arrays),
        }
        if ok:
            run.update(self.profile(result, history, records))
        waiting = run.get("waiting_cpu_share")
        note(
            f"{key}: {fmt_s(result.wall_s)}, CPU {result.cpu_s:.2f} s = "
            f"{run['cpu_share']:.1%} of a core"
            + (f", {waiting:.1%} while waiting" if waiting is not None else "")
            + ("" if ok else " FAILED")
            + f" (queued at start: {busy})"
        )
        return run

    def profile(
        self, result: Sampled, history: dict[int, dict[str, float]], records: list[dict[str, str]]
    ) -> dict[str, Any]:
        """Where a run's time goes: its events against Slurm's own times (whole seconds)."""
        first_staging = min(h["STAGING"] for h in history.values())
        last_succeeded = max(h["SUCCEEDED"] for h in history.values())
        span = slurm_span(records)
        by_index = {int(r["ArrayTaskId"]): r for r in records}
        # Slurm's times are truncated to the second: these lags read up to 1 s long.
        start_lag = [
            h["RUNNING"] - slurm_epoch(by_index[i]["StartTime"]) for i, h in history.items()
        ]
        end_lag = [h["SUCCEEDED"] - slurm_epoch(by_index[i]["EndTime"]) for i, h in history.items()]
        shares = result.share_between(first_staging, last_succeeded)
        return {
            "start_to_first_staging_s": first_staging - result.started_at,
            "first_staging_to_last_succeeded_s": last_succeeded - first_staging,
            "first_staging_to_last_slurm_end_s": span["last_end"] - first_staging,
            "last_slurm_end_to_last_succeeded_s": last_succeeded - span["last_end"],
            "last_succeeded_to_exit_s": result.started_at + result.wall_s - last_succeeded,
            "slurm_first_start_to_last_end_s": span["last_end"] - span["first_start"],
            "element_start_to_running_median_s": median(start_lag),
            "element_end_to_succeeded_median_s": median(end_lag),
            "element_end_to_succeeded_max_s": max(end_lag),
            "waiting_cpu_share": shares[0] if shares else None,
            "waiting_cpu_share_with_children": shares[1] if shares else None,
        }

    # -- measuring, and the table --------------------------------------------------------------

    def measure(self) -> None:
        note(
            f"{self.n} x `true` on partition {self.partition}, {self.reps} rep(s), "
            f"interleaved {', '.join(ARMS)}"
        )
        for _ in range(self.reps):
            for key, poll in ARMS.items():
                run = self.plain(poll) if key.startswith("P") else self.aiobatch(key)
                self.runs[key].append(run)
        self.tabulate()

    def tabulate(self) -> None:
        n, runs = self.n, self.runs
        walls = {key: Timing([r["wall_s"] for r in rs]) for key, rs in runs.items()}
        section: dict[str, Any] = {
            "instances": n,
            "partition": self.partition,
            "polls_s": ARMS,
            "wall": {key: t.as_json() for key, t in walls.items()},
            "runs": runs,
        }
        for ours_key, plain_key in PAIRS:
            ours, plain = walls[ours_key], walls[plain_key]
            poll = ARMS[ours_key]
            self.report.row(
                Row(
                    f"{plain_key}. plain `sbatch --array` of {n}, squeue every {poll} s",
                    fmt_s(plain),
                )
            )
            ratio = ours.median / plain.median
            section[f"ratio_{ours_key}_{plain_key}"] = ratio
            self.report.row(
                Row(
                    f"{ours_key}. `aiobatch run`, {n} x `true` on Slurm, poll {poll} s, "
                    "whole process",
                    fmt_s(ours),
                    f"{plain_key}: {fmt_s(plain.median)}",
                    f"{ratio:.2f}x",
                    f"<= {TARGET_RATIO}x",
                    ratio <= TARGET_RATIO,
                )
            )
            self.cpu_rows(ours_key, section)
            self.profile_row(ours_key)
            self.profile_row(plain_key)
        cross = walls["A1"].median / walls["P02"].median
        section["ratio_A1_P02"] = cross
        self.report.row(
            Row(
                "A1 (aiobatch's default poll, 1 s) against P02",
                fmt_s(walls["A1"]),
                f"P02: {fmt_s(walls['P02'].median)}",
                f"{cross:.2f}x",
            )
        )
        busy = [r["queued_at_start"] for rs in runs.values() for r in rs]
        self.report.row(Row("jobs in the queue when a run started (max)", str(max(busy))))
        self.report.sections["slurm"] = section

    def cpu_rows(self, key: str, section: dict[str, Any]) -> None:
        runs = self.runs[key]
        share = statistics.median(r["cpu_share"] for r in runs)
        cpu = statistics.median(r["cpu_s"] for r in runs)
        waiting = [r["waiting_cpu_share"] for r in runs if r.get("waiting_cpu_share") is not None]
        children = [
            r["waiting_cpu_share_with_children"]
            for r in runs
            if r.get("waiting_cpu_share_with_children") is not None
        ]
        section[f"cpu_{key}"] = {
            "cpu_s_median": cpu,
            "share_median": share,
            "waiting_share_median": median(waiting),
            "waiting_share_with_children_median": median(children),
        }
        self.report.row(
            Row(
                f"{key}. ... aiobatch's CPU (user+sys of the process and its children, wait4) "
                "/ wall",
                f"{cpu:.2f} s; {share:.1%} of a core",
                target=f"< {TARGET_CPU_SHARE:.0%}",
                met=share < TARGET_CPU_SHARE,
            )
        )
        if waiting:
            own, with_children = statistics.median(waiting), statistics.median(children)
            self.report.row(
                Row(
                    f"{key}. ... while it waits (first STAGING -> last SUCCEEDED)",
                    f"{own:.1%} of a core; with its Slurm commands {with_children:.1%}",
                    target=f"< {TARGET_CPU_SHARE:.0%}",
                    met=with_children < TARGET_CPU_SHARE,
                )
            )

    def profile_row(self, key: str) -> None:
        def med(what: str) -> str:
            values = [r[what] for r in self.runs[key] if r.get(what) is not None]
            return fmt_s(statistics.median(values)) if values else "-"

        # The same legs for both: what Slurm takes (to its last element's end, whole
        # seconds) and what comes around it.
        if key.startswith("P"):
            text = (
                f"submit -> last element's end (Slurm) {med('submit_to_last_slurm_end_s')}; "
                f"-> seen gone {med('last_slurm_end_to_seen_gone_s')}. Slurm's first start "
                f"-> last end {med('slurm_first_start_to_last_end_s')}"
            )
        else:
            text = (
                f"start -> first STAGING {med('start_to_first_staging_s')}; -> last element's "
                f"end (Slurm) {med('first_staging_to_last_slurm_end_s')}; -> last SUCCEEDED "
                f"{med('last_slurm_end_to_last_succeeded_s')}; -> exit "
                f"{med('last_succeeded_to_exit_s')}. Slurm's first start -> last end "
                f"{med('slurm_first_start_to_last_end_s')}; per element end -> SUCCEEDED "
                f"median {med('element_end_to_succeeded_median_s')}"
            )
        self.report.row(Row(f"{key}. where the time goes (medians; Slurm's times in s)", text))


def _parser() -> argparse.ArgumentParser:
    parser = bench_parser(__doc__, DEFAULT_JSON_OUT)
    parser.add_argument("--quick", action="store_true", help="50 instances, one repetition")
    parser.add_argument("--reps", type=positive, help="repetitions of each (default 3)")
    parser.add_argument("--instances", type=positive, help="array elements (default 200)")
    parser.add_argument("--partition", default="aiobatch", help="Slurm partition (aiobatch)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not os.environ.get("SLURM_CONF"):
        raise SystemExit('bench: no SLURM_CONF: run `eval "$(scripts/slurm-cluster up)"` first')
    out = args.json_out if args.json_out.is_absolute() else REPO / args.json_out
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="aiobatch-bench-") as tmp:
        bench = SlurmBench(args, Path(tmp))
        bench.measure()
    return bench.report.finish(
        out,
        started=started,
        load_before=load_before,
        strict=args.strict,
        baseline="Plain array",
        fields={"quick": args.quick, "reps": bench.reps},
        machine={"slurm": slurm("sinfo", "--version").strip()},
    )


if __name__ == "__main__":
    sys.exit(main())
