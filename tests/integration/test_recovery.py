"""A runtime killed with SIGKILL mid-job changes no outcome: its processes are adopted and run
exactly once where they survive, lost ones run again without being charged to retries, and an
attempt started just before the crash is found, never repeated unrecorded."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import Event, InstanceStateChanged
from tests.helpers import (
    child_process,
    kill_leftovers,
    process_alive,
    processes_of,
    runtime_id,
    stored,
)

pytestmark = pytest.mark.anyio

CHILD = Path(__file__).with_name("crash_child.py")
TWO_SLOTS = {"compute_envs": {"local": {"kind": "local", "slots": 2}}}


@contextmanager
def runtime_child(
    state_dir: Path, pidfile: Path, config: object, *args: str
) -> Iterator[subprocess.Popen[str]]:
    argv = [sys.executable, str(CHILD), str(state_dir), str(pidfile), json.dumps(config), *args]
    try:
        with child_process(argv) as child:
            yield child
    except BaseException:
        kill_leftovers(state_dir)  # a test failed midway: leave nothing running
        raise


def spawners_of(pid: int) -> list[int]:
    """The spawners a runtime process started: its children running _spawner.py (a second
    one runs once two starts overlap)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    found = [
        int(child)
        for child in children
        if b"_spawner.py" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
    assert found, f"runtime {pid} has no spawner among {children}"
    return found


def spawner_of(pid: int) -> int:
    """The one spawner a runtime process started."""
    [spawner] = spawners_of(pid)
    return spawner


def gated_job(tmp_path: Path, instances: int = 6) -> dict[str, object]:
    """Each instance counts its runs, then waits for the gate file."""
    runs, gate = tmp_path / "runs", tmp_path / "gate"
    runs.mkdir()
    body = (
        f'echo run >> "{runs}/$AIOBATCH_INSTANCE_INDEX"; '
        f'until test -e "{gate}"; do sleep 0.02; done'
    )
    return {
        "name": "survivor",
        "tasks": [
            # No retries: attempts that end with the runtime must not be charged to them.
            {"name": "first", "instances": instances, "command": body},
            {"name": "then", "depends_on": ["first"], "command": "true"},
        ],
    }


async def until_all(events: AsyncIterator[Event], state: str, count: int) -> None:
    """Until ``count`` instances of the task ``first`` have reached ``state``."""
    seen: set[int] = set()
    with anyio.fail_after(20):
        async for event in events:
            if isinstance(event, InstanceStateChanged) and (event.task, event.state) == (
                "first",
                state,
            ):
                seen.add(event.index)
                if len(seen) == count:
                    return


async def until_ran(tmp_path: Path, indexes: list[int]) -> None:
    """Until each of these instances of ``gated_job`` has marked its run: RUNNING means its
    shell started, not that it got that far."""
    runs = tmp_path / "runs"
    with anyio.fail_after(20):
        while not all((runs / str(i)).exists() for i in indexes):  # noqa: ASYNC110 - written by the instances
            await anyio.sleep(0.01)


def run_counts(tmp_path: Path, instances: int) -> list[int]:
    runs = tmp_path / "runs"
    return [len((runs / str(i)).read_text().splitlines()) for i in range(instances)]


def running_pids(state_dir: Path, job_id: str) -> list[int]:
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        rows = db.execute(
            "SELECT pid FROM instances WHERE job_id = ? AND state = 'RUNNING'", (job_id,)
        ).fetchall()
    return [pid for (pid,) in rows]


def kill_with_two_running(
    state_dir: Path, tmp_path: Path, *, spawner_too: bool = False
) -> tuple[str, list[int]]:
    """A runtime in a child process runs ``gated_job`` until two instances run, then is
    killed with SIGKILL (its spawner too, if asked). Returns the job and the two pids, alive."""
    pidfile = tmp_path / "runtime.pid"
    spec = json.dumps(gated_job(tmp_path))
    with runtime_child(state_dir, pidfile, TWO_SLOTS, spec, "--running", "2") as child:
        assert child.stdout is not None
        job_id = child.stdout.readline().strip()
        assert child.stdout.readline().strip() == "running"
        spawners = spawners_of(child.pid)
        child.send_signal(signal.SIGKILL)
        if spawner_too:
            for spawner in spawners:
                os.kill(spawner, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    pids = running_pids(state_dir, job_id)
    assert len(pids) == 2 and all(process_alive(pid) for pid in pids)
    return job_id, pids


async def test_kill_9_of_the_runtime_adopts_its_processes_which_run_once(
    state_dir: Path, tmp_path: Path
) -> None:
    job_id, survivors = kill_with_two_running(state_dir, tmp_path)

    config = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=2)})
    async with Runtime(state_dir, config=config) as rt:
        # Adopted, not killed: they run on, and nothing else of the job starts beside them.
        assert all(process_alive(pid) for pid in survivors)
        (tmp_path / "gate").touch()
        job = await rt.get_job(job_id)
        snapshot = await job.wait_for_success()
        result = await job.get_task_result("first")
        history = await stored(rt, job_id)
        ours = runtime_id(rt.state_dir)

    assert snapshot.tasks["then"].status == "SUCCEEDED"
    assert [(i.status, i.attempts) for i in result.instances or []] == [("SUCCEEDED", 1)] * 6
    assert run_counts(tmp_path, 6) == [1] * 6, "every instance ran exactly once"
    reasons = {e.reason for _, e in history if isinstance(e, InstanceStateChanged)}
    assert "runtime_lost" not in reasons
    assert not any(process_alive(pid) for pid in survivors)
    assert processes_of(ours) == []


async def test_kill_9_of_runtime_and_spawner_reruns_lost_attempts_uncharged(
    state_dir: Path, tmp_path: Path
) -> None:
    job_id, orphans = kill_with_two_running(state_dir, tmp_path, spawner_too=True)

    async with Runtime(state_dir) as rt:
        # How they end can never be known: they are killed, and their instances run again.
        assert not any(process_alive(pid) for pid in orphans)
        (tmp_path / "gate").touch()
        job = await rt.get_job(job_id)
        await job.wait_for_success()
        result = await job.get_task_result("first")
        history = await stored(rt, job_id)

    instances = result.instances or []
    assert [i.status for i in instances] == ["SUCCEEDED"] * 6
    rerun = sorted(i.index for i in instances if i.attempts == 2)
    assert len(rerun) == 2 and sorted(i.attempts for i in instances) == [1, 1, 1, 1, 2, 2]
    lost = [
        (e.index, e.attempt, e.lost)
        for _, e in history
        if isinstance(e, InstanceStateChanged) and e.reason == "runtime_lost"
    ]
    # Re-run as attempt 2 although the task has no retries: not charged.
    assert sorted(lost) == [(index, 2, 1) for index in rerun]
    assert run_counts(tmp_path, 6) == [2 if i in rerun else 1 for i in range(6)]


def kills_its_runtime(pidfile: Path, gate: Path, runs: Path) -> str:
    """A command whose first act kills its runtime; then it waits for ``gate`` and counts its
    run in ``runs``."""
    return (
        f'kill -9 $(cat "{pidfile}"); until test -e "{gate}"; do sleep 0.02; done; '
        f'echo run >> "{runs}"'
    )


def crash_in_the_commit_window(state_dir: Path, pidfile: Path, spec: dict[str, Any]) -> str:
    """Run ``spec`` in a runtime whose commits of instances are held, until one of its
    instances kills it: none of their states is stored. Returns the job's id."""
    with runtime_child(state_dir, pidfile, {}, json.dumps(spec), "--slow-commits") as child:
        assert child.stdout is not None
        job_id = child.stdout.readline().strip()
        assert child.wait(timeout=20) == -signal.SIGKILL
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        assert db.execute("SELECT * FROM instances").fetchall() == [], "a start was stored"
    return job_id


async def test_an_attempt_started_in_the_commit_window_is_adopted_not_repeated(
    state_dir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "runtime.pid"
    runs = tmp_path / "runs"
    # The instance's first act kills its runtime, whose commits are held: its start is not
    # in the store when the runtime dies. Then it waits for the gate, and counts its run.
    command = kills_its_runtime(pidfile, tmp_path / "gate", runs)
    spec = {"name": "window", "tasks": [{"name": "t", "command": command}]}
    job_id = crash_in_the_commit_window(state_dir, pidfile, spec)

    async with Runtime(state_dir) as rt:
        (tmp_path / "gate").touch()
        job = await rt.get_job(job_id)
        await job.wait_for_success()
        result = await job.get_task_result("t")
        history = [e for _, e in await stored(rt, job_id)]

    assert runs.read_text() == "run\n", "it ran once: adopted, not started again"
    assert [(i.status, i.attempts) for i in result.instances or []] == [("SUCCEEDED", 1)]
    states = [e.state for e in history if isinstance(e, InstanceStateChanged)]
    assert states == ["STAGING", "RUNNING", "UPLOADING", "SUCCEEDED"]


async def test_a_dependency_that_ran_and_ended_in_the_commit_window_is_not_run_again(
    state_dir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "runtime.pid"
    ran = {name: tmp_path / f"runs-{name}" for name in ("first", "then")}
    # ``first`` starts and ends, then ``then`` starts and kills the runtime, all while the
    # commits are held: none of it is in the store. ``then``'s start proves ``first``'s end.
    spec = {
        "name": "window-chain",
        "tasks": [
            {"name": "first", "command": f'echo run >> "{ran["first"]}"'},
            {
                "name": "then",
                "depends_on": ["first"],
                "command": kills_its_runtime(pidfile, tmp_path / "gate", ran["then"]),
            },
        ],
    }
    job_id = crash_in_the_commit_window(state_dir, pidfile, spec)

    async with Runtime(state_dir) as rt:
        (tmp_path / "gate").touch()
        job = await rt.get_job(job_id)
        await job.wait_for_success()
        results = await job.get_task_results()

    assert {name: path.read_text() for name, path in ran.items()} == {
        "first": "run\n",
        "then": "run\n",
    }, "each ran once: adopted, not started again"
    assert {
        name: [(i.status, i.attempts) for i in result.instances or []]
        for name, result in results.items()
    } == {"first": [("SUCCEEDED", 1)], "then": [("SUCCEEDED", 1)]}


async def test_an_instance_that_keeps_killing_its_runtime_fails_at_the_lost_limit(
    state_dir: Path, tmp_path: Path
) -> None:
    pidfile = tmp_path / "runtime.pid"
    runs = tmp_path / "runs"
    # Kills its runtime and its spawner ($PPID): its end can never be known, each time.
    command = f'echo run >> "{runs}"; kill -9 $(cat "{pidfile}") $PPID; sleep 60'
    spec = {"name": "poison", "tasks": [{"name": "t", "command": command}]}
    config = {"lost_limit": 1}
    with runtime_child(state_dir, pidfile, config, json.dumps(spec)) as child:
        assert child.stdout is not None
        job_id = child.stdout.readline().strip()
        assert child.wait(timeout=20) == -signal.SIGKILL
    # The next runtime finds the attempt lost and runs it again, uncharged: it strikes again,
    # within the commit window (held for a second): its loss must be stored before it runs.
    with runtime_child(state_dir, pidfile, config, "--slow-commits", "1") as child:
        assert child.wait(timeout=20) == -signal.SIGKILL
    async with Runtime(state_dir, config=Config(lost_limit=1)) as rt:
        job = await rt.get_job(job_id)
        snapshot = await job.wait_for_completion()
        result = await job.get_task_result("t")
        ours = runtime_id(rt.state_dir)

    assert runs.read_text() == "run\nrun\n"
    assert snapshot.status == "FAILED"
    [inst] = result.instances or []
    assert (inst.status, inst.reason, inst.attempts) == ("FAILED", "runtime_lost_limit: 1", 2)
    assert processes_of(ours) == []


async def test_a_spawner_killed_under_a_running_runtime_is_replaced_and_nothing_is_charged(
    state_dir: Path, tmp_path: Path
) -> None:
    spec = gated_job(tmp_path, instances=3)
    three = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=3)})
    async with Runtime(state_dir, config=three) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until_all(events, "RUNNING", 3)
            await until_ran(tmp_path, [0, 1, 2])
            for spawner in spawners_of(os.getpid()):
                os.kill(spawner, signal.SIGKILL)
            # How the three attempts end can no longer be heard: each is lost, not failed.
            await until_all(events, "PENDING", 3)
        (tmp_path / "gate").touch()
        await job.wait_for_success()
        result = await job.get_task_result("first")
        ours = runtime_id(rt.state_dir)
    # Re-run as attempt 2 by a new spawner, without a retry to spend; the old processes
    # were killed (at least once: each ran twice).
    assert [(i.status, i.attempts) for i in result.instances or []] == [("SUCCEEDED", 2)] * 3
    assert run_counts(tmp_path, 3) == [2, 2, 2]
    assert processes_of(ours) == []
