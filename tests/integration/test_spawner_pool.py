"""A runtime's local starts run in up to two spawners: a second one starts when a start is
asked for while the first is still making one, one start at a time keeps to the first, and a
spawner that dies loses its own attempts only (run again, uncharged)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import anyio
import pytest

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import InstanceStateChanged
from aiobatch.executors.spawner import Spawner
from tests.helpers import processes_of, runtime_id
from tests.integration.test_recovery import gated_job, run_counts, spawners_of, until_all

pytestmark = pytest.mark.anyio

TWO_SLOTS = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=2)})


def spawner_by_index(state_dir: Path, job_id: str, task: str) -> dict[tuple[int, int], int]:
    """(index, attempt) -> the pid of the spawner that started it, from the job's journal."""
    found: dict[tuple[int, int], int] = {}
    for line in (state_dir / "logs" / job_id / ".attempts").read_text().split("\n"):
        record = json.loads(line) if line else {}
        if "spawner" in record and "abandoned" not in record and record["key"][1] == task:
            found[(int(record["key"][2]), int(record["key"][3]))] = record["spawner"][0]
    return found


async def test_a_chain_keeps_to_one_spawner(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    chain = {
        "name": "chain",
        "tasks": [
            {"name": f"t{i}", "command": "true", "depends_on": [f"t{i - 1}"] if i else []}
            for i in range(5)
        ],
    }
    async with Runtime(state_dir, config=TWO_SLOTS) as rt:
        job = await rt.submit(chain)
        with anyio.fail_after(30):
            await job.wait_for_success()
        assert len(spawners_of(os.getpid())) == 1
    starters = {
        pid for i in range(5) for pid in spawner_by_index(state_dir, job.id, f"t{i}").values()
    }
    assert len(starters) == 1


async def test_a_start_asked_while_the_spawner_is_busy_goes_to_a_second_whose_death_loses_only_its_own(  # noqa: E501
    tmp_path: Path,
) -> None:
    state_dir = tmp_path / "state"
    async with Runtime(state_dir, config=TWO_SLOTS) as rt:
        warm = await rt.submit({"name": "warm", "tasks": [{"name": "w", "command": "true"}]})
        await rt.wait_job(warm.id)  # the first spawner runs now
        [first] = spawners_of(os.getpid())
        async with rt.subscribe() as events:
            # Stopped, the first spawner cannot answer the first start: the second start is
            # asked for while the first is unanswered, and goes to a new spawner.
            os.kill(first, signal.SIGSTOP)
            try:
                job = await rt.submit(gated_job(tmp_path, instances=2))
                await until_all(events, "RUNNING", 1)
            finally:
                os.kill(first, signal.SIGCONT)
            await until_all(events, "RUNNING", 1)  # the other one, once its spawner goes on
            spawners = spawners_of(os.getpid())
            started_by = spawner_by_index(state_dir, job.id, "first")
            assert len(spawners) == 2 and set(started_by.values()) == set(spawners)
            [(lost_index, _)] = [key for key, pid in started_by.items() if pid != first]
            [second] = [pid for pid in spawners if pid != first]
            os.kill(second, signal.SIGKILL)
            # Its attempt's end can no longer be heard: lost, not failed. The other runs on.
            with anyio.fail_after(20):
                async for event in events:
                    if isinstance(event, InstanceStateChanged) and event.state == "PENDING":
                        assert (event.index, event.reason) == (lost_index, "runtime_lost")
                        break
            await until_all(events, "RUNNING", 1)  # run again
        (tmp_path / "gate").touch()
        with anyio.fail_after(30):
            await job.wait_for_success()
        result = await job.get_task_result("first")
        ours = runtime_id(rt.state_dir)
    attempts = {i.index: (i.status, i.attempts) for i in result.instances or []}
    assert attempts == {lost_index: ("SUCCEEDED", 2), 1 - lost_index: ("SUCCEEDED", 1)}
    counts = run_counts(tmp_path, 2)
    assert counts[lost_index] == 2 and counts[1 - lost_index] == 1
    assert processes_of(ours) == []


async def test_a_dead_spawners_paused_copies_are_not_counted(tmp_path: Path) -> None:
    spawner = Spawner()
    await spawner.open()
    try:
        # As it tells of a copy that a full disk paused.
        spawner._deliver(
            {"op": "log_paused", "key": ["job", "t", "0", "1"], "stream": "stdout", "error": "x"}
        )
        assert len(spawner.paused_logs) == 1
        assert spawner.pid is not None
        os.kill(spawner.pid, signal.SIGKILL)
        with anyio.fail_after(10):
            await spawner._reader_done.wait()  # it has seen the end
        assert spawner.gone and spawner.paused_logs == set()
    finally:
        await spawner.aclose()
