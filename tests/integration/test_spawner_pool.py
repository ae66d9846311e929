"""A runtime's local starts run in up to two spawners: a second one starts when a start is
asked for while the first is still making one (never more than two), one start at a time
keeps to the first, and one that cannot start leaves the start to the first. A spawner that
dies loses its own attempts only (run again, uncharged), what they left behind goes too, and
it is dropped (and reaped) at the next start; its paused log copies no longer count."""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

import anyio
import pytest

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import InstanceStateChanged
from aiobatch.executors import records, spawner_process
from aiobatch.executors.spawner import Spawner
from tests.helpers import instance_is, process_alive, processes_of, runtime_id, until
from tests.integration.test_recovery import (
    gated_job,
    run_counts,
    spawners_of,
    until_all,
    until_ran,
)

pytestmark = pytest.mark.anyio

TWO_SLOTS = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=2)})


def spawner_by_index(state_dir: Path, job_id: str, task: str) -> dict[tuple[int, int], int]:
    """(index, attempt) -> the pid of the spawner that started it, from the job's journal."""
    journal = records.Journal(state_dir / "logs" / job_id / ".attempts")
    journal.refresh()
    return {
        (index, attempt): record.spawner[0]
        for (_, name, index, attempt), record in journal.records.items()
        if name == task and record.spawner is not None
    }


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
            await until_ran(tmp_path, [lost_index])
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


async def two_spawners(rt: Runtime) -> tuple[int, int]:
    """Make the runtime's pool hold two spawners (a start asked while the first one is
    stopped goes to a second): their pids, the first one's first."""
    warm = await rt.submit({"name": "warm", "tasks": [{"name": "w", "command": "true"}]})
    await rt.wait_job(warm.id)
    [first] = spawners_of(os.getpid())
    spec = {"name": "two", "tasks": [{"name": "t", "instances": 2, "command": "true"}]}
    async with rt.subscribe() as events:
        os.kill(first, signal.SIGSTOP)
        try:
            job = await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING"))  # the second spawner's
        finally:
            os.kill(first, signal.SIGCONT)
    await job.wait_for_success()
    [second] = [pid for pid in spawners_of(os.getpid()) if pid != first]
    return first, second


async def test_a_dead_spawner_is_dropped_at_the_next_start_and_reaped(tmp_path: Path) -> None:
    async with Runtime(tmp_path / "state", config=TWO_SLOTS) as rt:
        first, second = await two_spawners(rt)
        executor = rt.executors["local"]
        [dead] = [s for s in executor._spawners if s.pid == second]  # type: ignore[attr-defined]
        os.kill(second, signal.SIGKILL)
        with anyio.fail_after(10):
            await dead._reader_done.wait()  # the runtime has seen it end
        # The next start goes to the first spawner, idle: the dead one is dropped on the way.
        job = await rt.submit({"name": "next", "tasks": [{"name": "t", "command": "true"}]})
        await job.wait_for_success()
        assert [s.pid for s in executor._spawners] == [first]  # type: ignore[attr-defined]
        with pytest.raises(ProcessLookupError):  # reaped, not left a zombie
            os.kill(second, 0)


async def test_a_second_spawner_that_cannot_start_leaves_the_start_to_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Runtime(tmp_path / "state", config=TWO_SLOTS) as rt:
        warm = await rt.submit({"name": "warm", "tasks": [{"name": "w", "command": "true"}]})
        await rt.wait_job(warm.id)
        [first] = spawners_of(os.getpid())
        tried = anyio.Event()

        def no_fork() -> spawner_process.Launched:
            tried.set()
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

        monkeypatch.setattr(spawner_process, "launch", no_fork)
        spec = {"name": "two", "tasks": [{"name": "t", "instances": 2, "command": "true"}]}
        os.kill(first, signal.SIGSTOP)
        try:
            job = await rt.submit(spec)
            with anyio.fail_after(20):
                await tried.wait()  # the second start tried to add a spawner
        finally:
            os.kill(first, signal.SIGCONT)
        snapshot = await job.wait_for_completion()
        result = await job.get_task_result("t")
    assert snapshot.status == "SUCCEEDED"
    assert [(i.status, i.attempts) for i in result.instances or []] == [("SUCCEEDED", 1)] * 2


async def test_what_an_attempt_left_behind_goes_when_its_spawner_dies(tmp_path: Path) -> None:
    # Its spawner was the subreaper of the daemon; dead, it cannot kill it at the end.
    daemon, gate = tmp_path / "daemon", tmp_path / "gate"
    os.mkfifo(daemon)  # its pid, written as soon as it runs
    command = (  # the daemon tells its pid once it leads a session of its own
        f'if [ "$AIOBATCH_ATTEMPT" = 1 ]; then '
        f"setsid sh -c 'echo $$ > \"{daemon}\"; exec sleep 600' & "
        f'until test -e "{gate}"; do sleep 0.02; done; fi'
    )
    spec = {"name": "left", "tasks": [{"name": "t", "command": command}]}
    async with Runtime(tmp_path / "state", config=TWO_SLOTS) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            with anyio.fail_after(20):
                pid = int(await anyio.to_thread.run_sync(daemon.read_text, abandon_on_cancel=True))
            # The runtime has heard that it started: it waits for its end when the spawner
            # dies (not for the answer to its start, which ends in a sweep of its own).
            await until(events, instance_is("t", "RUNNING"))
            assert process_alive(pid)
            for spawner in spawners_of(os.getpid()):
                os.kill(spawner, signal.SIGKILL)
            lost = await until(events, instance_is("t", "PENDING"))
            assert isinstance(lost, InstanceStateChanged) and lost.reason == "runtime_lost"
            assert not process_alive(pid)
        await job.wait_for_success()


async def test_many_starts_at_once_keep_to_two_spawners(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    eight = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=8)})
    spec = {"name": "many", "tasks": [{"name": "t", "instances": 64, "command": "true"}]}
    async with Runtime(state_dir, config=eight) as rt:
        job = await rt.submit(spec)
        with anyio.fail_after(60):
            await job.wait_for_success()
        assert 1 <= len(spawners_of(os.getpid())) <= 2
    assert 1 <= len(set(spawner_by_index(state_dir, job.id, "t").values())) <= 2
