"""A job's own ``timeout`` bounds the whole job: when it passes, what runs is stopped, what
waits is cancelled, and the job ends FAILED with ``job_timeout``; a restart keeps the deadline,
a suspend does not stop it, a retry starts a new one."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import InstanceStateChanged, JobStateChanged
from tests.helpers import instance_is, process_alive, stored, until
from tests.integration.test_recovery import running_pids, runtime_child

pytestmark = pytest.mark.anyio

TWO_SLOTS = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=2)})


def sleepers(timeout: object, instances: int = 4) -> dict[str, Any]:
    return {
        "name": "bounded",
        "timeout": timeout,
        "tasks": [
            {"name": "slow", "instances": instances, "command": "sleep 30"},
            {"name": "after", "depends_on": ["slow"], "command": "true"},
        ],
    }


def job_ended(event: object) -> bool:
    return isinstance(event, JobStateChanged) and event.state in ("FAILED", "CANCELLED")


async def test_a_job_past_its_timeout_fails_with_job_timeout(state_dir: Path) -> None:
    async with Runtime(state_dir, config=TWO_SLOTS) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(sleepers("1s"))
            running = [await until(events, instance_is("slow", "RUNNING")) for _ in range(2)]
            ended = await until(events, job_ended, limit_s=15)
        snapshot = await job.wait_for_completion()
        result = await job.get_task_result("slow")
        history = await stored(rt, job.id)

    assert isinstance(ended, JobStateChanged)
    assert (ended.state, ended.reason) == ("FAILED", "job_timeout")
    assert (snapshot.status, snapshot.reason) == ("FAILED", "job_timeout")
    started = next(
        e.ts for _, e in history if isinstance(e, JobStateChanged) and e.state == "RUNNING"
    )
    assert 1.0 <= ended.ts - started < 10, "ended at its deadline, long before the sleeps"
    # The two that ran were stopped (their processes are gone); the two waiting, cancelled.
    pids = [e.pid for e in running if isinstance(e, InstanceStateChanged)]
    assert len(pids) == 2 and all(pid and not process_alive(pid) for pid in pids)
    assert [(i.status, i.reason) for i in result.instances or []] == [
        ("CANCELLED", "job_timeout")
    ] * 4
    stopped = {
        (e.index, e.reason)
        for _, e in history
        if isinstance(e, InstanceStateChanged) and e.state == "CANCELLED"
    }
    assert stopped == {(0, "job_timeout"), (1, "job_timeout")}
    assert snapshot.tasks["slow"].status == "CANCELLED"
    assert snapshot.tasks["slow"].reason == "job_timeout"
    assert snapshot.tasks["after"].status in ("SKIPPED", "CANCELLED")


async def test_a_job_that_ends_in_time_is_unaffected(state_dir: Path) -> None:
    spec = {"name": "quick", "timeout": "1h", "tasks": [{"name": "t", "command": "true"}]}
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        snapshot = await job.wait_for_success()
        waiting = dict(rt._attempts._deadlines)
    assert (snapshot.status, snapshot.reason) == ("SUCCEEDED", None)
    assert waiting == {}, "the deadline's wait ends with the job"


async def test_a_suspended_job_still_times_out(state_dir: Path) -> None:
    async with Runtime(state_dir, config=TWO_SLOTS) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(sleepers("1s", instances=1))
            await until(events, instance_is("slow", "RUNNING"))
            assert await job.suspend()
            ended = await until(events, job_ended, limit_s=15)
    assert isinstance(ended, JobStateChanged)
    assert (ended.state, ended.reason) == ("FAILED", "job_timeout")


async def test_a_retry_gets_a_fresh_deadline(state_dir: Path) -> None:
    async with Runtime(state_dir, config=TWO_SLOTS) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(sleepers("1s", instances=1))
            await until(events, job_ended, limit_s=15)
            # Long past the first deadline: a retry timed from the start would end at once.
            assert await rt.retry_job(job.id)
            again = await until(
                events, lambda e: isinstance(e, JobStateChanged) and e.state == "RUNNING"
            )
            await until(events, instance_is("slow", "RUNNING"))
            ended = await until(events, job_ended, limit_s=15)
    assert isinstance(ended, JobStateChanged) and isinstance(again, JobStateChanged)
    assert (ended.state, ended.reason) == ("FAILED", "job_timeout")
    assert ended.ts - again.ts >= 1.0


async def test_a_deadline_that_passed_while_no_runtime_ran_ends_the_job_at_recovery(
    state_dir: Path, tmp_path: Path
) -> None:
    timeout_s = 4.0
    pidfile = tmp_path / "runtime.pid"
    spec = json.dumps(sleepers(timeout_s, instances=3))
    config = {"compute_envs": {"local": {"kind": "local", "slots": 2}}}
    with runtime_child(state_dir, pidfile, config, spec, "--running", "2") as child:
        assert child.stdout is not None
        job_id = child.stdout.readline().strip()
        assert child.stdout.readline().strip() == "running"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL

    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        state, started = db.execute(
            "SELECT state, started_at FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    survivors = running_pids(state_dir, job_id)
    assert state == "RUNNING" and len(survivors) == 2
    # Waiting for the wall clock is the point here: the deadline passes while none runs.
    await anyio.sleep(max(0.0, started + timeout_s - time.time()) + 0.2)

    async with Runtime(state_dir, config=TWO_SLOTS) as rt:
        job = await rt.get_job(job_id)
        with anyio.fail_after(15):
            snapshot = await job.wait_for_completion()
        result = await job.get_task_result("slow")
    assert (snapshot.status, snapshot.reason) == ("FAILED", "job_timeout")
    statuses = [(i.status, i.reason) for i in result.instances or []]
    assert statuses == [("CANCELLED", "job_timeout")] * 3
    assert not any(process_alive(pid) for pid in survivors), "adopted, then stopped"


def stored_job(state_dir: Path, job_id: str) -> tuple[str, str | None, float | None, float | None]:
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        row = db.execute(
            "SELECT state, reason, started_at, ended_at FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    return row[0], row[1], row[2], row[3]


async def test_a_stalled_runtime_does_not_extend_the_deadline(
    state_dir: Path, tmp_path: Path
) -> None:
    timeout_s, stall_s = 2.0, 3.0
    spec = json.dumps(sleepers(timeout_s, instances=1))
    config = {"compute_envs": {"local": {"kind": "local", "slots": 2}}}
    with runtime_child(
        state_dir, tmp_path / "runtime.pid", config, spec, "--running", "1"
    ) as child:
        assert child.stdout is not None
        job_id = child.stdout.readline().strip()
        assert child.stdout.readline().strip() == "running"
        child.send_signal(signal.SIGSTOP)
        try:
            await anyio.sleep(stall_s)  # the stall itself, past the deadline
        finally:
            child.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        # Another process's database: read until it has ended (a limit, not a pace).
        with anyio.fail_after(15):
            while True:
                job = stored_job(state_dir, job_id)
                if job[0] != "RUNNING":
                    break
                await anyio.sleep(0.05)
        seen = time.monotonic()
        child.send_signal(signal.SIGTERM)
    state, reason, started, ended = job
    assert (state, reason) == ("FAILED", "job_timeout")
    assert started is not None and ended is not None
    # Timed out on waking: a clock paused by the stall would have waited 2 s more. Timed on
    # this process's monotonic clock, up to when the end was seen stored: a step of the wall
    # clock meanwhile must not decide it.
    assert seen - woke < timeout_s - 0.5, (ended - started, seen - woke)
