"""Tasks on a Slurm compute env run as job arrays on the test cluster (scripts/slurm-cluster):
one array per dispatch, throttled by max_parallel, the instance's env and logs, exit codes,
timeout, out of memory, stops, retries of the failed elements only, and a runtime killed with
SIGKILL whose elements are adopted, never submitted twice.

Without ``$SLURM_CONF`` these tests skip, except under ``CI=true`` where that fails. Run as a
script (``python -m tests.integration.test_slurm child ...``) this module is the runtime that a
test kills.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import msgspec
import pytest

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import Event, InstanceStateChanged
from aiobatch.executors.slurm import SlurmExecutor, SlurmSettings
from aiobatch.layout import StateLayout
from aiobatch.spec import load_spec
from tests.helpers import child_process

pytestmark = pytest.mark.anyio
CONFIG = Config(compute_envs={"slurm": ComputeEnvConfig(kind="slurm", slots=8)})
SETTINGS = SlurmSettings(partition="aiobatch", poll="0.3s")
# Each element notes what the tests check: its index, array, attempt, node, start and end.
REPORT = (
    'echo "$AIOBATCH_INSTANCE_INDEX $SLURM_ARRAY_TASK_ID $SLURM_ARRAY_JOB_ID $AIOBATCH_ATTEMPT'
    ' $SLURMD_NODENAME $(date +%s.%N)"'
)


def executor(state_dir: Path) -> SlurmExecutor:
    state_dir.mkdir(parents=True, exist_ok=True)
    return SlurmExecutor("slurm", SETTINGS, StateLayout(state_dir).runtime_id)


def runtime(state_dir: Path, slurm: SlurmExecutor) -> Runtime:
    return Runtime(state_dir, config=CONFIG, executors={"slurm": slurm})


def task(name: str, command: str, **fields: object) -> dict[str, object]:
    return {"name": name, "compute_env": "slurm", "command": command, **fields}


def reports(state_dir: Path, job_id: str, name: str, index: int) -> list[list[str]]:
    path = state_dir / "logs" / job_id / name / f"{index}.stdout"
    if not path.exists():  # made at the program's first output
        return []
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def squeue_state(target: str) -> str | None:
    done = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", target, "-o", "%T"], capture_output=True, text=True
    )
    return done.stdout.strip() or None if done.returncode == 0 else None


def slurm_arrays_named(fragment: str) -> set[str]:
    """Array job ids squeue knows whose name holds ``fragment``."""
    done = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%F %j"], capture_output=True, text=True
    )
    return {line.split()[0] for line in done.stdout.splitlines() if fragment in line}


async def test_six_instances_run_as_one_throttled_array(jobcomp: Path, tmp_path: Path) -> None:
    slurm = executor(tmp_path)
    command = f'{REPORT}; echo "$GREETING" >&2; sleep 1; date +%s.%N'
    spec = {
        "name": "arr",
        "tasks": [task("t", command, instances=6, max_parallel=2, env={"GREETING": "hi"})],
    }
    async with runtime(tmp_path, slurm) as rt:
        job = await rt.submit(spec)
        snapshot = await rt.wait_job(job.id)
    assert snapshot.status == "SUCCEEDED"
    assert slurm.submitted == 1
    runs, arrays = [], set()
    for i in range(6):
        [first, [end]] = reports(tmp_path, job.id, "t", i)
        index, task_id, array, attempt, node, began = first
        assert (index, task_id, attempt) == (str(i), str(i), "1")
        arrays.add(array)
        runs.append((node, float(began), float(end)))
        stderr = (tmp_path / "logs" / job.id / "t" / f"{i}.stderr").read_text()
        assert stderr.splitlines() == ["hi"]
    assert len(arrays) == 1
    assert {node for node, _, _ in runs} == {"n1", "n2"}
    for _, moment, _ in runs:
        assert sum(1 for _, start, end in runs if start <= moment < end) <= 2, runs
    # The env files (they may hold secrets) are gone.
    assert not list((tmp_path / "logs" / job.id / "t").glob("*.env"))


async def test_exit_code_timeout_and_memory(jobcomp: Path, tmp_path: Path) -> None:
    hog = "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); import time; time.sleep(5)"
    spec = {
        "name": "ends",
        "tasks": [
            task("exits", "exit 3", on_failure="continue"),
            task("sleeps", "sleep 60", timeout="2s", on_failure="continue"),
            task("hogs", f'{sys.executable} -c "{hog}"', on_failure="continue"),
        ],
    }
    defn = load_spec(spec, compute_envs=CONFIG.env_kinds())
    # A local-kind env refuses resources in a spec; the Slurm executor honours them.
    hogs = msgspec.structs.replace(defn.tasks[2], memory_bytes=50 << 20)
    defn = msgspec.structs.replace(defn, tasks=(defn.tasks[0], defn.tasks[1], hogs))
    async with runtime(tmp_path, executor(tmp_path)) as rt:
        job = await rt.submit(defn)
        await rt.wait_job(job.id)
        exits = await rt.instance_result(job.id, "exits", 0)
        sleeps = await rt.instance_result(job.id, "sleeps", 0)
        hogs_result = await rt.instance_result(job.id, "hogs", 0)
    assert (exits.status, exits.exit_code, exits.reason) == ("FAILED", 3, "exit_code: 3")
    assert (sleeps.status, sleeps.reason) == ("FAILED", "timeout")
    assert sleeps.duration_s is not None and sleeps.duration_s < 30
    assert (hogs_result.status, hogs_result.reason) == ("FAILED", "oom")


async def test_stop_scancels_the_running_array(jobcomp: Path, tmp_path: Path) -> None:
    spec = {"name": "stop", "tasks": [task("t", f"{REPORT}; exec sleep 300", instances=3)]}
    async with runtime(tmp_path, executor(tmp_path)) as rt:
        job = await rt.submit(spec)
        running = set()
        async for event in rt.events(job.id):
            if isinstance(event, InstanceStateChanged) and event.state == "RUNNING":
                running.add(event.index)
                if len(running) == 3:
                    break
        await rt.stop_job(job.id)
        snapshot = await rt.wait_job(job.id)
    assert snapshot.status == "CANCELLED"
    assert snapshot.tasks["t"].cancelled == 3
    # Running for Slurm need not mean its script has printed yet: the array is found by name.
    [array] = slurm_arrays_named(job.id)
    # Slurm keeps the elements' ends for MinJobAge (10 s): scancel ended each.
    assert [squeue_state(f"{array}_{i}") for i in range(3)] == ["CANCELLED"] * 3


async def test_pending_element_shows_slurm_reason_as_waiting_reason(
    jobcomp: Path, tmp_path: Path
) -> None:
    # max_parallel 1 is the array's %1: element 1 pends behind element 0 (JobArrayTaskLimit).
    spec = {"name": "pend", "tasks": [task("t", "exec sleep 300", instances=2, max_parallel=1)]}
    async with runtime(tmp_path, executor(tmp_path)) as rt:
        job = await rt.submit(spec)
        async for event in rt.events(job.id):
            if isinstance(event, InstanceStateChanged) and event.state == "RUNNING":
                break
        deadline = time.monotonic() + 30
        # Slurm's reason reaches the runtime by its poll (0.3 s here): no event announces it.
        while (waiting := await rt.instance_result(job.id, "t", 1)).reason is None:
            assert time.monotonic() < deadline, waiting
            await anyio.sleep(0.1)
        snapshot = await rt.job_snapshot(job.id, instances=True)
        light = await rt.job_snapshot(job.id)  # what the page polls: no instances
        await rt.stop_job(job.id)
        await rt.wait_job(job.id)
        ended = await rt.instance_result(job.id, "t", 1)
    assert (waiting.status, waiting.reason) == ("STAGING", "slurm_pending: JobArrayTaskLimit")
    instances = snapshot.tasks["t"].instances
    assert instances is not None and instances[1].reason == "slurm_pending: JobArrayTaskLimit"
    assert snapshot.tasks["t"].queued == {1: "slurm_pending: JobArrayTaskLimit"}
    assert light.tasks["t"].queued == {1: "slurm_pending: JobArrayTaskLimit"}
    assert ended.reason is not None and not ended.reason.startswith("slurm_pending")


def node_back(node: str) -> None:
    """The node taken down by a test serves again (its slurmd re-registers it by itself;
    a resume of a node already up is refused, and harmless)."""
    subprocess.run(
        ["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True, timeout=30
    )


async def test_a_failed_node_reruns_the_element_uncharged(jobcomp: Path, tmp_path: Path) -> None:
    settings = msgspec.structs.replace(SETTINGS, sbatch_options=("--nodelist=n2",))
    slurm = SlurmExecutor("slurm", settings, StateLayout(tmp_path).runtime_id)
    command = '[ "$AIOBATCH_ATTEMPT" = 1 ] && exec sleep 300; true'
    spec = {"name": "node-fail", "tasks": [task("t", command)]}  # no retries of its own
    async with runtime(tmp_path, slurm) as rt:
        job = await rt.submit(spec)
        async for event in rt.events(job.id):
            if isinstance(event, InstanceStateChanged) and event.state == "RUNNING":
                break
        try:
            down = await anyio.run_process(
                ["scontrol", "update", "nodename=n2", "state=down", "reason=aiobatch-test"],
                check=False,
            )
            assert down.returncode == 0, down.stderr
            with anyio.fail_after(60):
                snapshot = await rt.wait_job(job.id)
        finally:
            await anyio.to_thread.run_sync(node_back, "n2")
        result = await rt.instance_result(job.id, "t", 0)
        history = await rt.job_history(job.id)
    # Slurm's NODE_FAIL is not the program's failure: run again, not charged to retries.
    assert snapshot.status == "SUCCEEDED"
    assert (result.status, result.attempts) == ("SUCCEEDED", 2)
    requeued = [
        entry.event
        for entry in history
        if isinstance(entry.event, InstanceStateChanged) and entry.event.state == "PENDING"
    ]
    assert [(e.reason, e.attempt, e.lost) for e in requeued] == [("node_fail", 2, 1)]


async def test_stop_ends_the_elements_still_pending_at_once(jobcomp: Path, tmp_path: Path) -> None:
    # Two elements wait behind the first (%1): cancelled before they start, Slurm records
    # them in one jobcomp line without their task ids.
    spec = {
        "name": "pend-stop",
        "tasks": [task("t", "exec sleep 300", instances=3, max_parallel=1)],
    }
    async with runtime(tmp_path, executor(tmp_path)) as rt:
        job = await rt.submit(spec)
        async for event in rt.events(job.id):
            if isinstance(event, InstanceStateChanged) and event.state == "RUNNING":
                break
        await rt.stop_job(job.id)
        with anyio.fail_after(15):  # an element never heard of again is lost only after 30 s
            snapshot = await rt.wait_job(job.id)
        results = [await rt.instance_result(job.id, "t", i) for i in range(3)]
    assert snapshot.status == "CANCELLED"
    assert [(r.status, r.reason) for r in results] == [("CANCELLED", "stopped_by_user")] * 3


async def test_retry_resubmits_only_the_failed_elements(jobcomp: Path, tmp_path: Path) -> None:
    slurm = executor(tmp_path)
    fail_odd = (
        f'{REPORT}; [ "$AIOBATCH_ATTEMPT" = 1 ] && [ $((AIOBATCH_INSTANCE_INDEX % 2)) = 1 ]'
        " && exit 3; true"
    )
    spec = {"name": "retry", "tasks": [task("t", fail_odd, instances=4, retries={"limit": 1})]}
    async with runtime(tmp_path, slurm) as rt:
        job = await rt.submit(spec)
        snapshot = await rt.wait_job(job.id)
    assert snapshot.status == "SUCCEEDED"
    # The first attempts went as one array; each retry holds failed elements only (the two
    # failures may be seen in different polls, so their retries may go as two arrays).
    assert slurm.submitted in (2, 3)
    first, second = set(), set()
    for i in range(4):
        lines = reports(tmp_path, job.id, "t", i)
        assert [line[3] for line in lines] == (["1", "2"] if i % 2 else ["1"])
        first.add(lines[0][2])
        if i % 2:
            second.add(lines[1][2])
    assert len(first) == 1 and len(second) == slurm.submitted - 1 and not first & second


# -- a runtime killed mid-array ----------------------------------------------------------------


@contextmanager
def child_runtime(
    state_dir: Path, spec: dict[str, object], running: int
) -> Iterator[subprocess.Popen[str]]:
    with child_process(
        [sys.executable, "-m", "tests.integration.test_slurm", "child", str(state_dir),
         json.dumps(spec), str(running)],
    ) as child:  # fmt: skip
        yield child


def crash_spec(gate: Path) -> dict[str, object]:
    # 0 waits for the gate; 1 ends (exit 3) while the runtime is down; 2 ends at once.
    command = (
        f"{REPORT}; case $AIOBATCH_INSTANCE_INDEX in"
        f" 0) while [ ! -e {gate} ]; do sleep 0.2; done;;"
        " 1) sleep 3; exit 3;;"
        " esac"
    )
    return {"name": "crash", "tasks": [task("t", command, instances=3, on_failure="continue")]}


async def adopt_after_crash(tmp_path: Path, wait_purge: bool) -> None:
    gate = tmp_path / "gate"
    try:
        await _adopt_after_crash(tmp_path, gate, wait_purge)
    finally:
        await anyio.Path(gate).touch()  # element 0 ends even if the test failed before adopting it


async def _adopt_after_crash(tmp_path: Path, gate: Path, wait_purge: bool) -> None:
    state = tmp_path / "state"
    with child_runtime(state, crash_spec(gate), running=3) as child:
        assert child.stdout is not None
        job_id = child.stdout.readline().strip()
        assert child.stdout.readline().strip() == "running"
        child.send_signal(signal.SIGKILL)
    # RUNNING in Slurm comes before the element's program has written its first line.
    deadline = time.monotonic() + 30
    while not (written := reports(state, job_id, "t", 1)):  # a file: no event to wait on
        assert time.monotonic() < deadline, "element 1 never wrote its report"
        await anyio.sleep(0.1)
    [[*_, array, _, _, _]] = written
    target = f"{array}_1"
    deadline = time.monotonic() + (120 if wait_purge else 30)
    # Element 1 ends while no runtime runs; with wait_purge, until the controller forgets it.
    while (squeue_state(target) is not None) if wait_purge else squeue_state(target) != "FAILED":
        assert time.monotonic() < deadline, squeue_state(target)
        await anyio.sleep(0.5)
    slurm = executor(state)
    async with runtime(state, slurm) as rt:
        await anyio.Path(gate).touch()
        snapshot = await rt.wait_job(job_id)
        results = [await rt.instance_result(job_id, "t", i) for i in range(3)]
    assert slurm.submitted == 0  # nothing submitted again
    assert [(r.status, r.exit_code, r.attempts) for r in results] == [
        ("SUCCEEDED", 0, 1),
        ("FAILED", 3, 1),
        ("SUCCEEDED", 0, 1),
    ], snapshot
    for i in range(3):  # each ran once
        assert len(reports(state, job_id, "t", i)) == 1


async def test_killed_runtime_adopts_its_array(jobcomp: Path, tmp_path: Path) -> None:
    await adopt_after_crash(tmp_path, wait_purge=False)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_element_ended_past_min_job_age_is_found_in_jobcomp(
    jobcomp: Path, tmp_path: Path
) -> None:
    await adopt_after_crash(tmp_path, wait_purge=True)


async def child(state_dir: str, spec_json: str, running: int) -> None:
    """A runtime to kill: submits the job, prints its id, then ``running`` once that many
    instances run and that is stored."""
    async with runtime(Path(state_dir), executor(Path(state_dir))) as rt:
        started: set[int] = set()
        enough = anyio.Event()

        def watch(event: Event) -> None:
            if isinstance(event, InstanceStateChanged) and event.state == "RUNNING":
                started.add(event.index)
                if len(started) >= running:
                    enough.set()

        rt.on_event(watch)
        job = await rt.submit(json.loads(spec_json))
        print(job.id, flush=True)
        await enough.wait()
        await rt.list_jobs()  # answers once all so far is stored
        print("running", flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    from aiobatch.logging import configure_logging

    configure_logging("json", "info", sys.stderr)  # stdout carries only what the test reads
    anyio.run(child, sys.argv[2], sys.argv[3], int(sys.argv[4]))
