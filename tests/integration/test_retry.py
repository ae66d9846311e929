"""Retrying a FAILED or CANCELLED job re-runs only what did not succeed, with real processes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from aiobatch import JobNotRetryable, JobState, Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import InstanceStateChanged, JobStateChanged, event_decoder
from tests.helpers import instance_is, until

pytestmark = pytest.mark.anyio


def runs(tmp_path: Path, task: str, index: int) -> int:
    """How many times an instance ran: each run appends a line."""
    path = tmp_path / f"{task}-{index}.runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def counted(tmp_path: Path, body: str) -> str:
    return f'echo run >> "{tmp_path}/$AIOBATCH_TASK_NAME-$AIOBATCH_INSTANCE_INDEX.runs"; {body}'


def failing_job(tmp_path: Path) -> dict[str, object]:
    # Instance 1 of `a` fails until the file `fixed` exists; `b` depends on `a`.
    return {
        "name": "half-broken",
        "tasks": [
            {
                "name": "a",
                "instances": 3,
                "on_failure": "continue",  # siblings finish: the test knows what ran
                "command": counted(
                    tmp_path, f'test "$AIOBATCH_INSTANCE_INDEX" != 1 || test -e "{tmp_path}/fixed"'
                ),
            },
            {"name": "b", "depends_on": ["a"], "command": counted(tmp_path, "true")},
            {"name": "c", "command": counted(tmp_path, "true")},
        ],
    }


async def test_retry_reruns_only_failed_and_skipped_instances(
    state_dir: Path, tmp_path: Path
) -> None:
    async with Runtime(state_dir) as rt:
        job = await rt.submit(failing_job(tmp_path))
        failed = await job.wait_for_completion()
        assert failed.status == "FAILED"
        assert failed.tasks["b"].status == "SKIPPED"
        assert failed.tasks["c"].status == "SUCCEEDED"
        (tmp_path / "fixed").touch()
        assert await job.retry() is True
        assert job.state is JobState.RUNNING
        done = await job.wait_for_success()
        result = await job.get_task_result("a")
        with pytest.raises(JobNotRetryable, match="SUCCEEDED"):
            await job.retry()

    assert done.status == "SUCCEEDED" and done.reason is None and done.ended_at is not None
    assert [runs(tmp_path, "a", i) for i in range(3)] == [1, 2, 1]
    assert (runs(tmp_path, "b", 0), runs(tmp_path, "c", 0)) == (1, 1)
    assert [(i.status, i.attempts) for i in result.instances or []] == [
        ("SUCCEEDED", 1),
        ("SUCCEEDED", 2),
        ("SUCCEEDED", 1),
    ]
    # The history keeps both ends of the job and both attempts of the failed instance.
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        rows = db.execute("SELECT body FROM events WHERE job_id = ? ORDER BY seq", (job.id,))
        events = [event_decoder.decode(body) for (body,) in rows]
    job_states = [e.state for e in events if isinstance(e, JobStateChanged)]
    assert job_states == ["RUNNING", "FAILED", "RUNNING", "SUCCEEDED"]
    attempts = [
        (e.attempt, e.state)
        for e in events
        if isinstance(e, InstanceStateChanged)
        and (e.task, e.index) == ("a", 1)
        and e.state in ("FAILED", "SUCCEEDED")
    ]
    assert attempts == [(1, "FAILED"), (2, "SUCCEEDED")]


async def test_retry_after_reopen_and_of_a_stopped_job(state_dir: Path, tmp_path: Path) -> None:
    one_slot = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=1)})
    spec = {
        "name": "stop-then-retry",
        "tasks": [
            {"name": "first", "command": counted(tmp_path, "true")},
            {
                "name": "slow",
                "depends_on": ["first"],
                "instances": 2,
                "command": counted(tmp_path, f'test -e "{tmp_path}/fixed" || sleep 60'),
            },
        ],
    }
    async with Runtime(state_dir, config=one_slot) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("slow", "RUNNING", 0))
        await job.stop()
        stopped = await job.wait_for_completion()
    assert stopped.status == "CANCELLED"
    assert stopped.tasks["slow"].status == "CANCELLED"

    (tmp_path / "fixed").touch()
    async with Runtime(state_dir, config=one_slot) as rt:  # the job now comes from SQLite
        job = await rt.get_job(job.id)
        await job.retry()
        done = await job.wait_for_success()
        slow = await job.get_task_result("slow")
    assert done.tasks["slow"].done == 2
    # `first` succeeded before the stop and is kept; slow[0] was stopped and ran again.
    assert (runs(tmp_path, "first", 0), runs(tmp_path, "slow", 1)) == (1, 1)
    assert [i.attempts for i in slow.instances or []] == [2, 1]


async def test_running_job_is_not_retryable(state_dir: Path, tmp_path: Path) -> None:
    spec = {"name": "busy", "tasks": [{"name": "t", "command": "sleep 60"}]}
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING"))
        with pytest.raises(JobNotRetryable, match="RUNNING; only FAILED or CANCELLED"):
            await job.retry()
        await job.stop()


async def test_two_retries_at_once_run_the_failed_part_once(
    state_dir: Path, tmp_path: Path
) -> None:
    spec = {"name": "twice", "tasks": [{"name": "t", "command": counted(tmp_path, "exit 1")}]}
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        await job.wait_for_completion()
    async with Runtime(state_dir) as rt:  # the job is loaded from SQLite by each retry
        outcomes: list[object] = []

        async def retry() -> None:
            try:
                outcomes.append(await rt.retry_job(job.id))
            except JobNotRetryable as exc:
                outcomes.append(exc.status)

        async with anyio.create_task_group() as tg:
            tg.start_soon(retry)
            tg.start_soon(retry)
        await rt.wait_job(job.id)
    assert sorted(map(str, outcomes)) == ["RUNNING", "True"]
    assert runs(tmp_path, "t", 0) == 2
