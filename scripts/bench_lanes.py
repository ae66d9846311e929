#!/usr/bin/env python3
"""Per-index dependency edges: a chain of fan-out tasks joined lane by lane vs stage by stage.

    .venv/bin/python scripts/bench_lanes.py [--quick] [--reps 3] [--instances 200]
        [--seed N] [--strict] [--json-out PATH]

Three job specs, each 4 tasks s0..s3 of N instances (200; ``--quick``: 50), run with
``aiobatch run --quiet`` as a whole process on a fresh state dir, the local env given N
slots (every lane can run at once), interleaved A, B, C, A, B, C, ... after one untimed
run of C:

A. s(k+1) depends on s(k) with ``by_index: true``: instance i starts once instance i of the
   stage before SUCCEEDED.
B. the same tasks joined stage by stage (``depends_on: [s(k)]``).
C. spec A with every instance running ``true``: what dispatching the by-index chain costs.

Each instance sleeps a time fixed per (stage, index) by a seeded RNG: most 0.05-0.2 s, a
few lanes per stage (different lanes in each stage) about 1 s. The table is in each task's
``env`` and the command picks its entry by ``AIOBATCH_INSTANCE_INDEX`` under /bin/sh. From
the same table: the slowest lane (max over i of the sum over stages), what A ideally costs,
and the sum of the stage maxima, what B ideally costs. Target (the issue's): A within 1.2x
of slowest lane + C, medians; B visibly slower than A (taken as B / A >= 1.2).

Every run is checked from its database (opened read-only): the job SUCCEEDED and all 4N
instances too. The stored events also show that A flows by index (some s1 started before
the last s0 ended) and where time goes: s(k) SUCCEEDED -> s(k+1) STAGING per lane in A,
the gap between stages in B, and the job's span (first STAGING to last SUCCEEDED) against
the process's wall time. Markdown table to stdout, progress to stderr, everything to
``--json-out`` (default bench-results/lanes.json). Exit status: 0, or 1 when a run failed
or a check failed (or, with ``--strict``, a target was missed).
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench import (
    ProcResult,
    Timing,
    aiobatch_cli,
    fmt_s,
    fs_probe,
    run_process,
    scratch_dir,
    write_json,
)
from benchreport import Report, Row, bench_parser, note, positive

from aiobatch.events import InstanceStateChanged, event_decoder

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON_OUT = Path("bench-results") / "lanes.json"  # relative to the repo root
STAGES = 4
TARGET_RATIO = 1.2  # A / (slowest lane + C)
VISIBLY_FASTER = 1.2  # B / A
FAST_S = (0.05, 0.2)
SLOW_S = (0.9, 1.1)
# Picks this instance's entry of the stage's table; `exec` spares a second fork.
LANE_COMMAND = 'set -- $LANE_SECONDS; shift "$AIOBATCH_INSTANCE_INDEX"; exec sleep "$1"'

Durations = list[list[float]]  # [stage][index] -> seconds
History = dict[tuple[str, int], dict[str, float]]  # (task, index) -> state -> first ts


def durations_table(instances: int, seed: int) -> Durations:
    """Seconds per (stage, index): fast mostly, a few slow lanes per stage, none slow twice."""
    rng = random.Random(seed)
    slow_per_stage = max(1, round(instances * 0.02))
    slow = rng.sample(range(instances), min(instances, slow_per_stage * STAGES))
    table: Durations = []
    for stage in range(STAGES):
        slow_here = set(slow[stage * slow_per_stage : (stage + 1) * slow_per_stage])
        # Rounded to ms: the env holds exactly these, and the figures use the same values.
        table.append(
            [
                round(rng.uniform(*(SLOW_S if i in slow_here else FAST_S)), 3)
                for i in range(instances)
            ]
        )
    return table


def spec(name: str, table: Durations, *, by_index: bool, noop: bool) -> dict[str, Any]:
    tasks: list[dict[str, Any]] = []
    for stage, seconds in enumerate(table):
        task: dict[str, Any] = {"name": f"s{stage}", "instances": len(seconds)}
        if noop:
            task["command"] = "true"
        else:
            task["command"] = LANE_COMMAND
            task["env"] = {"LANE_SECONDS": " ".join(f"{s:.3f}" for s in seconds)}
        if stage:
            before = f"s{stage - 1}"
            task["depends_on"] = [{"task": before, "by_index": True} if by_index else before]
        tasks.append(task)
    return {"name": name, "tasks": tasks}


def read_run(db_path: Path) -> tuple[str, dict[str, int], History]:
    """The job's state, its instances per state and each instance's first ts per state."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        states = [row[0] for row in db.execute("SELECT state FROM jobs")]
        counts = dict(db.execute("SELECT state, count(*) FROM instances GROUP BY state"))
        history: History = {}
        for (body,) in db.execute("SELECT body FROM events ORDER BY seq"):
            event = event_decoder.decode(body)
            if isinstance(event, InstanceStateChanged):
                seen = history.setdefault((event.task, event.index), {})
                seen.setdefault(event.state, event.ts)
                if event.state == "SUCCEEDED" and event.duration_s is not None:
                    seen["duration"] = event.duration_s  # the program's own, by its spawner
    finally:
        db.close()
    return (states[0] if len(states) == 1 else f"{len(states)} jobs"), counts, history


def spread(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_s": statistics.median(ordered),
        "p90_s": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max_s": ordered[-1],
    }


def span(history: History) -> float:
    """First STAGING to last SUCCEEDED: the job's own time, without start-up and exit."""
    first = min(h["STAGING"] for h in history.values())
    return max(h["SUCCEEDED"] for h in history.values()) - first


def lane_profile(history: History, instances: int) -> dict[str, list[float]]:
    """Where a lane's time goes in A, from the stored events' timestamps (one clock)."""
    out: dict[str, list[float]] = {
        "exit_noticed_to_succeeded": [],  # UPLOADING -> SUCCEEDED (after-exit hooks, none here)
        "succeeded_to_next_staging": [],  # the gate of index i opens, dispatch
        "next_staging_to_running": [],  # work dir, log files, spawn
        "hop_exit_noticed_to_next_running": [],  # the three above
        "running_to_exit_noticed_minus_program": [],  # start and exit noticed vs its own time
        "lane_span_minus_programs": [],  # s0 STAGING -> s3 SUCCEEDED minus the 4 durations
    }
    for i in range(instances):
        lane = [history[(f"s{k}", i)] for k in range(STAGES)]
        for h in lane:
            run = h["UPLOADING"] - h["RUNNING"] - h["duration"]
            out["running_to_exit_noticed_minus_program"].append(run)
        for h, nxt in pairwise(lane):
            out["exit_noticed_to_succeeded"].append(h["SUCCEEDED"] - h["UPLOADING"])
            out["succeeded_to_next_staging"].append(nxt["STAGING"] - h["SUCCEEDED"])
            out["next_staging_to_running"].append(nxt["RUNNING"] - nxt["STAGING"])
            out["hop_exit_noticed_to_next_running"].append(nxt["RUNNING"] - h["UPLOADING"])
        programs = sum(h["duration"] for h in lane)
        out["lane_span_minus_programs"].append(
            lane[-1]["SUCCEEDED"] - lane[0]["STAGING"] - programs
        )
    return out


def stage_gaps(history: History, instances: int) -> list[float]:
    """Per edge: the last s(k) SUCCEEDED -> the first s(k+1) STAGING."""
    gaps = []
    for k in range(STAGES - 1):
        done = max(history[(f"s{k}", i)]["SUCCEEDED"] for i in range(instances))
        gaps.append(min(history[(f"s{k + 1}", i)]["STAGING"] for i in range(instances)) - done)
    return gaps


def flow_by_index(history: History, instances: int) -> dict[str, Any]:
    """Did some s1 instance start (RUNNING) before the last s0 instance ended (SUCCEEDED)?"""
    last_s0_end = max(history[("s0", i)]["SUCCEEDED"] for i in range(instances))
    starts = [history[("s1", i)]["RUNNING"] for i in range(instances)]
    early = [s for s in starts if s < last_s0_end]
    return {
        "s1_started_before_last_s0_ended": len(early),
        "earliest_s1_start_before_last_s0_end_s": last_s0_end - min(starts),
        "ok": bool(early),
    }


class LanesBench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.quick: bool = args.quick
        self.reps: int = args.reps if args.reps is not None else (1 if self.quick else 3)
        self.n: int = args.instances if args.instances is not None else (50 if self.quick else 200)
        self.seed: int = args.seed
        self.tmp = tmp
        self.report = Report()
        self.cli = aiobatch_cli()
        self.config = tmp / "config.toml"
        self.config.write_text(f'[compute_envs.local]\nkind = "local"\nslots = {self.n}\n')
        self.table = durations_table(self.n, self.seed)
        self.runs: list[dict[str, Any]] = []

    def run(self, key: str, spec_path: Path) -> tuple[float, History | None]:
        """One whole ``aiobatch run``; its history only if it and all its instances SUCCEEDED."""
        with scratch_dir(self.tmp, f"state-{key}") as state:
            argv: list[str | Path] = [self.cli, "run", spec_path, "--state-dir", state]
            result: ProcResult = run_process([*argv, "--config", self.config, "--quiet"])
            job_state, counts, history = read_run(state / "aiobatch.db")
        ok = self.report.check(
            result.returncode == 0
            and job_state == "SUCCEEDED"
            and counts.get("SUCCEEDED") == STAGES * self.n,
            f"{key}: exit {result.returncode}, job {job_state}, instances {counts}\n"
            f"{result.stderr}",
        )
        self.runs.append(
            {"spec": key, "wall_s": result.wall_s, "ok": ok, "job": job_state, "instances": counts}
        )
        note(f"{key}: {fmt_s(result.wall_s)}{'' if ok else ' FAILED'}")
        return result.wall_s, history if ok else None

    def measure(self) -> None:
        n, table = self.n, self.table
        specs = {
            "A": spec("lanes-by-index", table, by_index=True, noop=False),
            "B": spec("lanes-by-stage", table, by_index=False, noop=False),
            "C": spec("lanes-dispatch", table, by_index=True, noop=True),
        }
        paths = {k: write_json(self.tmp / f"{k}.json", s) for k, s in specs.items()}
        slowest = max(sum(table[k][i] for k in range(STAGES)) for i in range(n))
        stage_max_sum = sum(max(row) for row in table)
        note(
            f"{STAGES} stages x {n} instances, {self.reps} rep(s); slowest lane "
            f"{fmt_s(slowest)}, sum of stage maxima {fmt_s(stage_max_sum)}"
        )
        self.run("C", paths["C"])  # untimed: warms the caches for what follows

        samples: dict[str, list[float]] = {"A": [], "B": [], "C": []}
        spans: dict[str, list[float]] = {"A": [], "B": [], "C": []}
        profile: dict[str, list[float]] = {}
        gaps: list[float] = []
        flow: dict[str, Any] | None = None
        for _ in range(self.reps):
            for key in samples:
                wall, history = self.run(key, paths[key])
                samples[key].append(wall)
                if history is None:
                    continue  # a failed run: already reported
                spans[key].append(span(history))
                if key == "A":
                    for what, values in lane_profile(history, n).items():
                        profile.setdefault(what, []).extend(values)
                    flow = flow or flow_by_index(history, n)
                elif key == "B":
                    gaps += stage_gaps(history, n)
        self.tabulate(samples, spans, profile, gaps, flow, slowest, stage_max_sum)

    def tabulate(
        self,
        samples: dict[str, list[float]],
        spans: dict[str, list[float]],
        profile: dict[str, list[float]],
        gaps: list[float],
        flow: dict[str, Any] | None,
        slowest: float,
        stage_max_sum: float,
    ) -> None:
        n = self.n
        a, b, c = (Timing(samples[k]) for k in "ABC")
        ideal_a = slowest + c.median
        ratio = a.median / ideal_a
        speedup = b.median / a.median
        flows = self.report.check(
            flow is not None and flow["ok"], f"A did not flow by index: {flow}"
        )
        lane = {what: spread(values) for what, values in profile.items()}
        gap = spread(gaps) if gaps else None
        self.report.sections["lanes"] = {
            "stages": STAGES,
            "instances": n,
            "slots": n,
            "seed": self.seed,
            "durations_s": self.table,
            "slowest_lane_s": slowest,
            "sum_of_stage_maxima_s": stage_max_sum,
            "A_by_index": a.as_json(),
            "B_by_stage": b.as_json(),
            "C_dispatch": c.as_json(),
            "ratio_A_to_slowest_lane_plus_C": ratio,
            "ratio_A_best_to_slowest_lane_plus_C_best": a.best / (slowest + c.best),
            "ratio_B_to_A": speedup,
            "span_first_staging_to_last_succeeded_s": dict(spans),
            "A_lane_profile": lane,
            "B_stage_gap_last_succeeded_to_first_staging": gap,
            "A_flow_by_index": flow,
            "runs": self.runs,
        }
        label = f"{STAGES} x {n}"
        self.report.row(
            Row(
                f"A. {label}, joined `by_index`",
                fmt_s(a),
                f"slowest lane + C: {fmt_s(slowest)} + {fmt_s(c.median)} = {fmt_s(ideal_a)}",
                f"{ratio:.2f}x",
                f"<= {TARGET_RATIO}x",
                ratio <= TARGET_RATIO,
            )
        )
        self.report.row(
            Row(
                f"B. {label}, joined stage by stage",
                fmt_s(b),
                f"A: {fmt_s(a.median)}",
                f"B/A {speedup:.2f}x",
                f"A visibly faster (B/A >= {VISIBLY_FASTER})",
                speedup >= VISIBLY_FASTER,
            )
        )
        self.report.row(Row(f"C. {label} of `true`, `by_index` (dispatch)", fmt_s(c)))
        self.report.row(
            Row(
                "durations: slowest lane; sum of stage maxima",
                f"{fmt_s(slowest)}; {fmt_s(stage_max_sum)}",
                ratio=f"ideal B/A {(stage_max_sum + c.median) / ideal_a:.2f}x",
            )
        )
        if flow is not None:
            lead = flow["earliest_s1_start_before_last_s0_end_s"]
            self.report.row(
                Row(
                    "A flows by index (first A run's events)",
                    f"{flow['s1_started_before_last_s0_ended']}/{n} s1 RUNNING before the last "
                    f"s0 SUCCEEDED, the first {fmt_s(lead)} before",
                    target="at least 1",
                    met=flows,
                )
            )
        if lane:
            med = {what: fmt_s(v["median_s"]) for what, v in lane.items()}
            hop, slack = lane["hop_exit_noticed_to_next_running"], lane["lane_span_minus_programs"]
            self.report.row(
                Row(
                    "A per hop, medians: exit noticed -> SUCCEEDED -> next STAGING -> RUNNING",
                    f"{med['exit_noticed_to_succeeded']} + {med['succeeded_to_next_staging']} + "
                    f"{med['next_staging_to_running']}; total p90 {fmt_s(hop['p90_s'])}, "
                    f"max {fmt_s(hop['max_s'])}",
                )
            )
            self.report.row(
                Row(
                    "A per lane: span minus its programs' own time",
                    f"median {fmt_s(slack['median_s'])}, max {fmt_s(slack['max_s'])}; per "
                    f"instance RUNNING -> exit noticed minus program: "
                    f"{med['running_to_exit_noticed_minus_program']}",
                )
            )
        if gap is not None:
            self.report.row(
                Row(
                    "B: last s(k) SUCCEEDED -> first s(k+1) STAGING",
                    f"median {fmt_s(gap['median_s'])}, max {fmt_s(gap['max_s'])}",
                )
            )
        for key in "ABC":
            if spans[key]:
                job_span = statistics.median(spans[key])
                wall = statistics.median(samples[key])
                self.report.row(
                    Row(
                        f"{key}: first STAGING -> last SUCCEEDED",
                        fmt_s(job_span),
                        f"whole process: {fmt_s(wall)}",
                        f"+{fmt_s(wall - job_span)} start-up and exit",
                    )
                )


def _parser() -> argparse.ArgumentParser:
    parser = bench_parser(__doc__, DEFAULT_JSON_OUT)
    parser.add_argument("--quick", action="store_true", help="50 instances, one repetition")
    parser.add_argument("--reps", type=positive, help="repetitions per spec (default 3)")
    parser.add_argument("--instances", type=positive, help="instances per task (default 200)")
    parser.add_argument("--seed", type=int, default=20240611, help="seed of the durations")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = args.json_out if args.json_out.is_absolute() else REPO / args.json_out
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="aiobatch-bench-") as tmp:
        fs_before = fs_probe(Path(tmp))
        bench = LanesBench(args, Path(tmp))
        bench.measure()
        fs_after = fs_probe(Path(tmp))
    return bench.report.finish(
        out,
        started=started,
        load_before=load_before,
        strict=args.strict,
        fields={"quick": args.quick, "reps": bench.reps},
        machine={"tmp_fs_before": fs_before, "tmp_fs_after": fs_after},
    )


if __name__ == "__main__":
    sys.exit(main())
