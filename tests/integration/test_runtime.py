"""The embedded Runtime with real subprocesses, real SQLite files and real signals."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from anyio.abc import TaskGroup

from aiobatch import (
    JobFailed,
    JobState,
    Runtime,
    RuntimeClosed,
    SpecError,
    StateDirBusy,
    Status,
)
from aiobatch.attempt import InstanceContext, Outcome
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import InstanceStateChanged, JobStateChanged
from aiobatch.spec import TaskDef
from tests.helpers import Gates, instance_is, process_alive, stored, until

pytestmark = pytest.mark.anyio


def one_slot() -> Config:
    return Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=1)})


async def test_diamond_with_fan_out_runs_in_dependency_order(state_dir: Path) -> None:
    spec = {
        "name": "diamond",
        "env": {"GREETING": "hello"},
        "tasks": [
            {"name": "split", "command": "echo split >> ../../../order"},
            {
                "name": "render",
                "depends_on": ["split"],
                "instances": 4,
                "env": {"WHO": "render"},
                "command": "echo $GREETING $WHO $AIOBATCH_TASK_NAME $AIOBATCH_INSTANCE_INDEX "
                "$AIOBATCH_INSTANCE_COUNT $AIOBATCH_ATTEMPT $AIOBATCH_JOB_NAME; pwd; "
                "echo render >> ../../../order",
            },
            {"name": "check", "depends_on": ["split"], "command": ["sh", "-c", "echo err >&2"]},
            {"name": "merge", "depends_on": ["render", "check"], "command": "cat ../../../order"},
        ],
    }
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        snapshot = await job.wait_for_success()
        assert job.state is JobState.SUCCEEDED and job.status is Status.TERMINATED
        assert await job.is_terminated() and await job.is_successful()
        assert job.get_task_names() == ["split", "render", "check", "merge"]
        progress = await job.get_task_progress("render")
        assert progress.stage_string() == "render:0/4/4[100%]"  # running/terminated/total
        assert progress.get_stage_progress_formatted_string().endswith(" render:0/4/4[100%]\t")
        result = await job.get_task_result("render")

    assert snapshot.status == "SUCCEEDED"
    assert [i.exit_code for i in result.instances or []] == [0, 0, 0, 0]
    assert all(i.attempts == 1 and (i.duration_s or 0) > 0 for i in result.instances or [])
    logs = state_dir / "logs" / job.id
    for index in range(4):
        out = (logs / "render" / f"{index}.stdout").read_text().splitlines()
        assert out[0] == f"hello render render {index} 4 1 diamond"
        assert out[1] == str(state_dir / "work" / job.id / "render" / str(index))
    assert (logs / "check" / "0.stderr").read_text() == "err\n"
    order = (logs / "merge" / "0.stdout").read_text().split()
    assert order[0] == "split" and order[1:] == ["render"] * 4


async def test_submitted_job_is_committed_before_submit_returns(state_dir: Path) -> None:
    async with Runtime(state_dir) as rt:
        job = await rt.submit({"name": "durable", "tasks": [{"name": "a", "command": "true"}]})
        # A separate connection, as another process would see it.
        with sqlite3.connect(state_dir / "aiobatch.db") as db:
            rows = db.execute("SELECT name FROM jobs WHERE id = ?", (job.id,)).fetchall()
        assert rows == [("durable",)]
        await job.wait_for_success()


async def test_invalid_spec_stores_nothing(state_dir: Path) -> None:
    async with Runtime(state_dir) as rt:
        with pytest.raises(SpecError) as info:
            await rt.submit({"name": "bad", "tasks": [{"name": "a", "depends_on": ["b"]}]})
        assert "$.tasks[0].depends_on[0]: unknown task 'b'" in info.value.errors
        assert await rt.list_jobs() == []


async def test_unsupported_fields_are_refused_at_submit(state_dir: Path) -> None:
    async with Runtime(state_dir) as rt:
        local_image = {"name": "a", "image": "busybox", "compute_env": "local"}
        with pytest.raises(SpecError, match=r"\$\.tasks\[0\]\.image: not supported by compute"):
            await rt.submit({"name": "d", "tasks": [local_image]})
        assert await rt.list_jobs() == []


async def test_retries_on_listed_exit_codes_then_fails(state_dir: Path) -> None:
    spec = {
        "name": "flaky",
        "tasks": [
            {
                "name": "first-fails",
                # Fails with 3 on attempt 1, succeeds on attempt 2.
                "command": 'test "$AIOBATCH_ATTEMPT" -ge 2 || exit 3',
                "retries": {"limit": 2, "on_exit_codes": [3]},
            },
            {
                "name": "wrong-code",
                "command": "exit 4",
                "retries": {"limit": 2, "on_exit_codes": [3]},
                "on_failure": "continue",
            },
        ],
    }
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        with pytest.raises(JobFailed) as info:
            await job.wait_for_success()
        first = await job.get_task_result("first-fails")
        wrong = await job.get_task_result("wrong-code")
    assert info.value.failed_tasks == ("wrong-code",)
    assert first.status == "SUCCEEDED" and (first.instances or [])[0].attempts == 2
    [failed] = wrong.instances or []
    assert (failed.status, failed.reason, failed.attempts) == ("FAILED", "exit_code: 4", 1)


async def test_fail_job_stops_running_siblings(state_dir: Path, tmp_path: Path) -> None:
    gates = Gates(tmp_path / "gates", 1)
    spec = {
        "name": "fail-fast",
        "tasks": [
            {"name": "slow", "command": gates.command + "; sleep 60"},
            {"name": "bad", "command": "exit 2"},
            {"name": "after", "depends_on": ["slow"], "command": "true"},
        ],
    }
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            running = await until(events, instance_is("slow", "RUNNING"))
        snapshot = await job.wait_for_completion()
    assert isinstance(running, InstanceStateChanged) and running.pid is not None
    assert not process_alive(running.pid)
    assert snapshot.status == "FAILED" and snapshot.reason == "task_failed: bad"
    assert snapshot.tasks["slow"].status == "CANCELLED"
    assert snapshot.tasks["after"].status == "SKIPPED"
    assert snapshot.tasks["after"].reason == "upstream_cancelled: slow"


async def test_continue_runs_independent_branches(state_dir: Path) -> None:
    spec = {
        "name": "carry-on",
        "tasks": [
            {"name": "bad", "command": "exit 1", "on_failure": "continue"},
            {"name": "downstream", "depends_on": ["bad"], "command": "true"},
            {"name": "deeper", "depends_on": ["downstream"], "command": "true"},
            {"name": "other", "command": "true"},
            {"name": "other2", "depends_on": ["other"], "command": "true"},
        ],
    }
    async with Runtime(state_dir) as rt:
        snapshot = await (await rt.submit(spec)).wait_for_completion()
    states = {name: task.status for name, task in snapshot.tasks.items()}
    assert states == {
        "bad": "FAILED",
        "downstream": "SKIPPED",
        "deeper": "SKIPPED",
        "other": "SUCCEEDED",
        "other2": "SUCCEEDED",
    }
    assert snapshot.tasks["deeper"].reason == "upstream_failed: bad"
    assert snapshot.status == "FAILED"


async def test_timeout_kills_the_whole_process_group(state_dir: Path, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    spec = {
        "name": "slowpoke",
        "tasks": [
            {
                "name": "hang",
                # The grandchild ignores nothing but is not the leader: the group kill gets it.
                "command": f"sleep 60 & echo $! > {pidfile}; wait",
                "timeout": "300ms",
                "retries": 1,
            }
        ],
    }
    async with Runtime(state_dir, config=Config(kill_grace="1s")) as rt:
        job = await rt.submit(spec)
        snapshot = await job.wait_for_completion()
        result = await job.get_task_result("hang")
    [inst] = result.instances or []
    assert snapshot.status == "FAILED"
    assert (inst.reason, inst.attempts) == ("timeout", 2)
    assert not process_alive(int(pidfile.read_text()))


async def test_term_ignored_then_killed_after_grace(state_dir: Path) -> None:
    spec = {
        "name": "stubborn",
        "tasks": [{"name": "a", "command": "trap '' TERM; sleep 30", "timeout": "200ms"}],
    }
    async with Runtime(state_dir, config=Config(kill_grace="300ms")) as rt:
        job = await rt.submit(spec)
        await job.wait_for_completion()
        [inst] = (await job.get_task_result("a")).instances or []
    assert inst.reason == "timeout" and inst.exit_code is None
    assert inst.duration_s is not None and 0.4 < inst.duration_s < 5


async def test_suspend_holds_new_instances_and_resume_releases_them(
    state_dir: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 3)
    spec = {"name": "pausable", "tasks": [{"name": "t", "instances": 3, "command": gates.command}]}
    async with Runtime(state_dir, config=one_slot()) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING", 0))
            assert await job.suspend()
            assert job.state is JobState.SUSPENDED and job.status is Status.SUSPENDED
            await gates.release(0)
            await until(events, instance_is("t", "SUCCEEDED", 0))
            # Dispatch happens in the same step as the release of the slot: nothing started.
            result = await job.get_task_result("t")
            assert [i.status for i in result.instances or []] == [
                "SUCCEEDED",
                "PENDING",
                "PENDING",
            ]
            assert result.reason == "job_suspended"
            assert await job.resume()
            for index in (1, 2):
                await until(events, instance_is("t", "RUNNING", index))
                await gates.release(index)
        snapshot = await job.wait_for_success()
    assert snapshot.tasks["t"].succeeded == 3


async def test_reasons_while_waiting(state_dir: Path, tmp_path: Path) -> None:
    gates = Gates(tmp_path / "gates", 2)
    spec = {
        "name": "why",
        "tasks": [
            {"name": "first", "instances": 2, "max_parallel": 1, "command": gates.command},
            {"name": "second", "depends_on": ["first"], "command": "true"},
        ],
    }
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("first", "RUNNING", 0))
            snapshot = await job.snapshot(instances=True)
            assert snapshot.tasks["first"].reason == "max_parallel"
            assert snapshot.tasks["second"].reason == "waiting_for: first"
            assert (await job.get_task_progress("first")).stage_string() == "first:1/0/2[0%]"
            await gates.release(0)
            await until(events, instance_is("first", "RUNNING", 1))
            await gates.release(1)
        await job.wait_for_success()


async def test_stop_job_kills_processes_and_cancels(state_dir: Path) -> None:
    spec = {"name": "stoppable", "tasks": [{"name": "t", "instances": 3, "command": "sleep 60"}]}
    async with Runtime(state_dir, config=Config(kill_grace="5s")) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            first = await until(events, instance_is("t", "RUNNING"))
            await rt.stop_job(job.id)
            ended = await until(events, lambda e: isinstance(e, JobStateChanged))
        snapshot = await job.wait_for_completion()
    assert isinstance(ended, JobStateChanged) and ended.state == "CANCELLED"
    assert isinstance(first, InstanceStateChanged) and not process_alive(first.pid or 0)
    assert snapshot.reason == "stopped_by_user"
    assert {t.status for t in snapshot.tasks.values()} == {"CANCELLED"}


async def test_stop_one_instance(state_dir: Path, tmp_path: Path) -> None:
    gates = Gates(tmp_path / "gates", 2)
    spec = {"name": "one", "tasks": [{"name": "t", "instances": 2, "command": gates.command}]}
    async with Runtime(state_dir, config=one_slot()) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until(events, instance_is("t", "RUNNING", 0))
            await job.stop_instance("t", 0)
            await until(events, instance_is("t", "CANCELLED", 0))
            await until(events, instance_is("t", "RUNNING", 1))
            await gates.release(1)
        snapshot = await job.wait_for_completion()
        result = await job.get_task_result("t")
    assert [(i.status, i.reason) for i in result.instances or []] == [
        ("CANCELLED", "stopped_by_user"),
        ("SUCCEEDED", None),
    ]
    assert snapshot.status == "CANCELLED"


async def test_priority_orders_dispatch_between_jobs(state_dir: Path, tmp_path: Path) -> None:
    gates = Gates(tmp_path / "gates", 1)
    started: list[str] = []
    async with Runtime(state_dir, config=one_slot()) as rt:
        async with rt.subscribe() as events:
            blocker = await rt.submit(
                {"name": "blocker", "tasks": [{"name": "b", "command": gates.command}]}
            )
            await until(events, instance_is("b", "RUNNING"))
            low = await rt.submit({"name": "low", "tasks": [{"name": "low", "command": "true"}]})
            high = await rt.submit(
                {"name": "high", "priority": 5, "tasks": [{"name": "high", "command": "true"}]}
            )
            rt.on_event(
                lambda e: (
                    started.append(e.task)
                    if isinstance(e, InstanceStateChanged) and e.state == "STAGING"
                    else None
                )
            )
            await gates.release(0)
            for job in (blocker, low, high):
                await job.wait_for_success()
    assert started == ["high", "low"]


async def test_list_exist_get_and_reopen(state_dir: Path) -> None:
    spec: dict[str, Any] = {"name": "listed", "tasks": [{"name": "a", "command": "exit 1"}]}
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        await job.wait_for_completion()
        assert await rt.exist_job(job.id) and not await rt.exist_job("nope")
    async with Runtime(state_dir) as rt:
        [summary] = await rt.list_jobs()
        assert (summary.id, summary.status) == (job.id, "FAILED")
        assert await rt.list_jobs(status="SUCCEEDED") == []
        again = await rt.get_job(job.id)
        assert again.state is JobState.FAILED
        result = await again.get_task_result("a")
        assert (result.instances or [])[0].exit_code == 1


async def test_ended_jobs_leave_the_engine_but_stay_queryable(state_dir: Path) -> None:
    async with Runtime(state_dir) as rt:
        job = await rt.submit({"name": "done", "tasks": [{"name": "a", "command": "true"}]})
        await job.wait_for_success()
        assert rt.live_tasks(job.id) == {}  # the engine holds only jobs that can change
        assert rt.statistics()["jobs"] == {}
        assert job.state is JobState.SUCCEEDED
        assert not await job.suspend()
        assert not await job.resume()
        await job.stop()
        await job.stop_instance("a", 0)
        assert (await job.snapshot()).status == "SUCCEEDED"
        assert rt.statistics()["jobs"] == {}


async def test_exit_reasons_signal_and_exec_failure(state_dir: Path) -> None:
    spec = {
        "name": "reasons",
        "tasks": [
            {"name": "killed", "command": "kill -KILL $$", "on_failure": "continue"},
            {"name": "missing", "command": ["/nonexistent/tool"], "on_failure": "continue"},
            {
                "name": "signal-retried",
                "command": 'test "$AIOBATCH_ATTEMPT" -ge 2 || kill -TERM $$',
                "retries": {"limit": 1, "on_exit_codes": [143]},
            },
        ],
    }
    async with Runtime(state_dir) as rt:
        job = await rt.submit(spec)
        snapshot = await job.wait_for_completion()
        results = await job.get_task_results()
    [killed] = results["killed"].instances or []
    [missing] = results["missing"].instances or []
    [retried] = results["signal-retried"].instances or []
    assert (killed.status, killed.reason, killed.exit_code) == ("FAILED", "signal: SIGKILL", None)
    assert missing.status == "FAILED"
    assert missing.reason == "exec_failed: /nonexistent/tool: No such file or directory"
    assert (retried.status, retried.attempts) == ("SUCCEEDED", 2)
    assert snapshot.status == "FAILED"


async def test_clean_exit_interrupts_attempts_without_counting_them(
    state_dir: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 1)
    spec = {"name": "resumable", "tasks": [{"name": "t", "command": gates.command}]}
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            running = await until(events, instance_is("t", "RUNNING"))
    assert isinstance(running, InstanceStateChanged)
    assert not process_alive(running.pid or 0)  # killed on the way out
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            again = await rt.get_job(job.id)
            assert again.state is JobState.RUNNING
            await until(events, instance_is("t", "RUNNING"))
            await gates.release(0)
        snapshot = await again.wait_for_success()
        history = [e for _, e in await stored(rt, job.id)]
    [inst] = (await again.get_task_result("t")).instances or []
    # A new attempt (each run has its own number), not charged: the task has no retries.
    assert inst.attempts == 2
    changes = [e for e in history if isinstance(e, InstanceStateChanged)]
    [interrupted] = [e for e in changes if e.reason == "interrupted"]
    assert (interrupted.attempt, interrupted.interrupted, interrupted.lost) == (2, 1, 0)
    assert "runtime_lost" not in {e.reason for e in changes}
    assert snapshot.status == "SUCCEEDED"


async def test_one_runtime_per_state_dir(state_dir: Path) -> None:
    async with Runtime(state_dir):
        with pytest.raises(
            StateDirBusy, match=rf"in use by another aiobatch runtime \(pid {os.getpid()}\)"
        ):
            async with Runtime(state_dir):
                pass
    async with Runtime(state_dir) as rt:  # released on exit
        assert await rt.list_jobs() == []


async def test_drain_lets_running_attempts_finish_then_interrupts_the_rest(
    state_dir: Path, tmp_path: Path
) -> None:
    gates = Gates(tmp_path / "gates", 1)
    spec = {
        "name": "draining",
        "tasks": [
            {"name": "quick", "command": gates.command},
            {"name": "slow", "command": "sleep 60"},
            {"name": "later", "depends_on": ["quick"], "command": "true"},
        ],
    }
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            # Started at once (by two spawners, maybe), in either order.
            running: dict[str, InstanceStateChanged] = {}
            while running.keys() != {"quick", "slow"}:
                event = await until(
                    events, lambda e: isinstance(e, InstanceStateChanged) and e.state == "RUNNING"
                )
                assert isinstance(event, InstanceStateChanged)
                running[event.task] = event
            slow = running["slow"]
            async with anyio.create_task_group() as tg:
                tg.start_soon(rt.drain, 2.0)
                await wait_all_tasks_blocked()  # the drain has begun
                with pytest.raises(RuntimeClosed):
                    await rt.submit(spec)
                await gates.release(0)
                await until(events, instance_is("quick", "SUCCEEDED"))
            snapshot = await job.snapshot()
        # Nothing new started while draining: `later` waits for the next start.
        assert snapshot.tasks["later"].status == "READY"
        assert snapshot.tasks["slow"].running == 1
    assert isinstance(slow, InstanceStateChanged) and not process_alive(slow.pid or 0)
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        rows = dict(db.execute("SELECT task, state || ' ' || reason FROM instances").fetchall())
    assert rows["slow"] == "PENDING interrupted" and "later" not in rows


class BrokenExecutor:
    """Starts nothing, says it did, then fails with a bug of its own."""

    kind = "local"

    async def open(self, background: TaskGroup) -> None:
        pass

    async def aclose(self) -> None:
        pass

    def unsupported(self, task: TaskDef) -> list[str]:
        return []

    async def run(self, ctx: InstanceContext, on_started: Callable[[int | None], None]) -> Outcome:
        on_started(None)
        raise RuntimeError("an executor's bug")


async def test_an_executor_bug_settles_its_instance_once_and_the_runtime_goes_on(
    state_dir: Path,
) -> None:
    spec = {"name": "buggy", "tasks": [{"name": "t", "instances": 2, "command": "true"}]}
    async with Runtime(state_dir, executors={"local": BrokenExecutor()}) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            snapshot = await job.wait_for_completion()
            changes = []
            while (event := events.receive_nowait()) and not (
                isinstance(event, JobStateChanged) and event.state == "FAILED"
            ):
                if isinstance(event, InstanceStateChanged):
                    changes.append((event.index, event.state, event.reason))
        assert (await rt.health())["status"] == "ok"
    assert snapshot.status == "FAILED"
    for index in (0, 1):
        ends = [c for c in changes if c[0] == index and c[1] in ("FAILED", "CANCELLED")]
        assert len(ends) <= 1, f"instance {index} settled twice: {ends}"
    assert (0, "FAILED", "executor_error: an executor's bug") in changes
