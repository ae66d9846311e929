"""The test cluster that ``scripts/slurm-cluster up`` starts takes jobs the way the slurm tests
need: plain and array jobs, both nodes, a throttle, memory limits, scancel, and a final state
that can still be found once the controller has forgotten the job.

Slurm's standard commands against ``$SLURM_CONF``; without it these tests skip, except under
``CI=true`` where that fails. Slurm tells of a job's end only when asked, so waits for a final
state poll ``squeue``; a job's start and a process's death are awaited as events (a FIFO the job
writes to, a pidfd).
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import need_slurm

# A job no longer changes once in one of these (squeue's long names).
FINAL = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}
NODES = {"n1", "n2"}
WAIT = 60.0  # seconds for a short job to end, from its submission


@dataclass(frozen=True)
class Cluster:
    jobcomp: Path  # jobcomp/filetxt's file: a line per finished job
    min_job_age: int  # seconds a finished job stays in squeue, at least
    proctrack: str


def run(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, cwd=cwd)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    need_slurm()
    assert "is UP" in run("scontrol", "ping")
    config = dict(
        (key.strip(), value.strip())
        for key, _, value in (
            line.partition("=") for line in run("scontrol", "show", "config").splitlines()
        )
    )
    assert config["JobCompType"] == "jobcomp/filetxt"
    return Cluster(
        jobcomp=Path(config["JobCompLoc"]),
        min_job_age=int(config["MinJobAge"].split()[0]),
        proctrack=config["ProctrackType"],
    )


def sbatch(tmp_path: Path, *options: str, wrap: str) -> str:
    """Submit, with the job's output in tmp_path; the job id."""
    out = run("sbatch", "--parsable", f"--chdir={tmp_path}", *options, "--wrap", wrap, cwd=tmp_path)
    return out.strip().split(";")[0]


def states(job: str) -> dict[str, str]:
    """squeue's state of each element of job ("7" or "7_0", "7_1", ...); finished ones too,
    until the controller purges them (then none)."""
    args = ["squeue", "-h", "-t", "all", "-j", job, "-o", "%i %T"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if done.returncode != 0 and "Invalid job id" in done.stderr:
        return {}
    assert done.returncode == 0, f"{args}: {done.stderr}"
    return dict(line.split() for line in done.stdout.splitlines())


def wait_final(job: str, elements: int = 1) -> dict[str, str]:
    """The final states of job's elements, once all of them have one."""
    deadline = time.monotonic() + WAIT
    while True:
        now = states(job)
        # Pending elements share one record ("7_[2-3%2]") until they start.
        if len(now) == elements and set(now.values()) <= FINAL:
            return now
        assert time.monotonic() < deadline, f"job {job} still {now} after {WAIT}s"
        time.sleep(0.1)


def jobcomp_records(cluster: Cluster, job: str) -> list[dict[str, str]]:
    """jobcomp/filetxt's records of job (of each element, for an array)."""
    records = []
    for line in cluster.jobcomp.read_text().splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if job in (fields.get("JobId"), fields.get("ArrayJobId")):
            records.append(fields)
    return records


def await_line(fifo: Path, timeout: float = WAIT) -> str:
    """The first line a job writes into fifo (made here), within timeout."""
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(timeout * 1000), f"nothing written to {fifo} in {timeout}s"
        return os.read(fd, 4096).decode().splitlines()[0]
    finally:
        os.close(fd)


def test_wrapped_job_runs_and_its_end_is_recorded(cluster: Cluster, tmp_path: Path) -> None:
    ok = sbatch(tmp_path, "-o", "ok.out", wrap="echo hello from $SLURMD_NODENAME")
    failed = sbatch(tmp_path, "-o", "failed.out", wrap="exit 3")
    assert wait_final(ok) == {ok: "COMPLETED"}
    assert wait_final(failed) == {failed: "FAILED"}
    assert re.fullmatch(r"hello from n[12]\n", (tmp_path / "ok.out").read_text())
    # Written when the job ends, not when the controller forgets it.
    [done] = jobcomp_records(cluster, ok)
    assert (done["JobState"], done["ExitCode"]) == ("COMPLETED", "0:0")
    [exited] = jobcomp_records(cluster, failed)
    assert (exited["JobState"], exited["ExitCode"]) == ("FAILED", "3:0")


def test_array_throttled_runs_on_both_nodes(cluster: Cluster, tmp_path: Path) -> None:
    # Each element notes when it ran and where; the sleep makes the throttle's work visible.
    job = sbatch(
        tmp_path,
        "--array=0-3%2",
        "-o",
        "%A_%a.out",
        wrap='echo "$SLURM_ARRAY_TASK_ID $SLURMD_NODENAME $(date +%s.%N)"; sleep 1; date +%s.%N',
    )
    final = wait_final(job, elements=4)
    assert final == {f"{job}_{i}": "COMPLETED" for i in range(4)}
    runs: list[tuple[str, float, float]] = []  # node, start, end
    for i in range(4):
        first, last = (tmp_path / f"{job}_{i}.out").read_text().splitlines()
        index, node, began = first.split()
        assert index == str(i)
        runs.append((node, float(began), float(last)))
    assert {node for node, _, _ in runs} == NODES
    # Never more than two at once: at each start, count the elements running then.
    for _, moment, _ in runs:
        running = sum(1 for _, start, end in runs if start <= moment < end)
        assert running <= 2, runs
    records = jobcomp_records(cluster, job)
    assert sorted(r["ArrayTaskId"] for r in records) == ["0", "1", "2", "3"]
    assert {r["JobState"] for r in records} == {"COMPLETED"}


def test_job_over_its_memory_is_killed(cluster: Cluster, tmp_path: Path) -> None:
    hog = "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(5)"
    job = sbatch(tmp_path, "--mem=50M", "-o", "hog.out", wrap=f'{sys.executable} -c "{hog}"')
    [state] = wait_final(job).values()
    if cluster.proctrack == "proctrack/cgroup":
        # The kernel's OOM killer in the job's cgroup, and Slurm says so.
        assert state == "OUT_OF_MEMORY"
        [record] = jobcomp_records(cluster, job)
        assert record["JobState"] == "OUT_OF_MEMORY"
    else:
        # The fallback: jobacct_gather sees the step over its limit and kills it.
        assert state != "COMPLETED"
        assert "exceeded memory limit" in (tmp_path / "hog.out").read_text()


def test_scancel_ends_the_job_and_its_processes(cluster: Cluster, tmp_path: Path) -> None:
    fifo = tmp_path / "started"
    job = sbatch(tmp_path, "-o", "/dev/null", wrap=f"echo $$ > {fifo}; exec sleep 300")
    pid = int(await_line(fifo))
    pidfd = os.pidfd_open(pid)
    try:
        run("scancel", job)
        assert wait_final(job) == {job: "CANCELLED"}
        # The job's process dies (a pidfd turns readable when it does).
        assert select.select([pidfd], [], [], WAIT)[0], f"pid {pid} outlived scancel"
    finally:
        os.close(pidfd)
    [record] = jobcomp_records(cluster, job)
    assert record["JobState"] == "CANCELLED"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_final_state_found_after_min_job_age(cluster: Cluster, tmp_path: Path) -> None:
    job = sbatch(tmp_path, "-o", "/dev/null", wrap="exit 7")
    assert wait_final(job) == {job: "FAILED"}
    # The controller drops the job at its next purge (every 60 s) after MinJobAge.
    deadline = time.monotonic() + cluster.min_job_age + 90
    while states(job):
        assert time.monotonic() < deadline, f"job {job} still known to squeue"
        time.sleep(1)
    gone = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    assert gone.returncode != 0 and "Invalid job id" in gone.stderr
    [record] = jobcomp_records(cluster, job)
    assert (record["JobState"], record["ExitCode"]) == ("FAILED", "7:0")
