"""Dependency conditions, per-index edges and retry backoff with real components: a real
runtime (or a real ``aiobatch serve`` killed with SIGKILL), local processes, SQLite. Order is
set by gate files the test creates; nothing waits on a sleep."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiobatch import Runtime
from aiobatch.config import ComputeEnvConfig, Config
from aiobatch.events import Event, InstanceStateChanged, JobStateChanged
from aiobatch.executors import records
from tests.helpers import instance_is, stored, until
from tests.integration.service import Service

pytestmark = pytest.mark.anyio

FOUR_SLOTS = Config(compute_envs={"local": ComputeEnvConfig(kind="local", slots=4)})


def wait_for(path: Path) -> str:
    """Shell: block until the test creates ``path``."""
    return f'until test -e "{path}"; do sleep 0.02; done'


def mark(root: Path) -> str:
    """Shell: record that this attempt ran (one line per run, one file per task and index)."""
    return f'echo "$AIOBATCH_ATTEMPT" >> "{root}/$AIOBATCH_TASK_NAME-$AIOBATCH_INSTANCE_INDEX"'


def runs(root: Path, task: str, index: int) -> list[str]:
    path = root / f"{task}-{index}"
    return path.read_text().splitlines() if path.exists() else []


async def until_seen(
    events: AsyncIterator[Event], wanted: set[tuple[str, int, str]], limit_s: float = 20
) -> None:
    """Until every (task, index, state) in ``wanted`` has been published."""
    left = set(wanted)
    with anyio.fail_after(limit_s):
        async for event in events:
            if isinstance(event, InstanceStateChanged):
                left.discard((event.task, event.index, event.state))
                if not left:
                    return
    raise AssertionError(f"event stream ended before {sorted(left)}")


def instance_changes(events: list[Any], task: str, index: int) -> list[InstanceStateChanged]:
    return [
        e
        for e in events
        if isinstance(e, InstanceStateChanged) and (e.task, e.index) == (task, index)
    ]


async def aiobatch(*args: str | Path) -> tuple[int, str, str]:
    done = await anyio.run_process([sys.executable, "-m", "aiobatch", *map(str, args)], check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


# -- by-index edges --------------------------------------------------------------------------


async def test_by_index_starts_each_instance_once_its_counterpart_succeeded(
    state_dir: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    spec = {
        "name": "pipeline",
        "tasks": [
            {
                "name": "s1",
                "instances": 3,
                "command": f'test "$AIOBATCH_INSTANCE_INDEX" != 2 || {{ {wait_for(gate)}; }}',
            },
            {
                "name": "s2",
                "instances": 3,
                "depends_on": [{"task": "s1", "by_index": True}],
                "command": mark(tmp_path),
            },
        ],
    }
    async with Runtime(state_dir, config=FOUR_SLOTS) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until_seen(
                events, {("s1", 2, "RUNNING"), ("s2", 0, "SUCCEEDED"), ("s2", 1, "SUCCEEDED")}
            )
        # s1[2] is held by its gate: a whole-task edge would hold all of s2 back.
        during = await job.snapshot(instances=True)
        gate.touch()
        done = await job.wait_for_success()
        history = [event for _, event in await stored(rt, job.id)]

    s1, s2 = during.tasks["s1"], during.tasks["s2"]
    assert s1.status == "RUNNING" and s2.status == "RUNNING"
    assert [i.status for i in s1.instances or []] == ["SUCCEEDED", "SUCCEEDED", "RUNNING"]
    assert [i.status for i in s2.instances or []] == ["SUCCEEDED", "SUCCEEDED", "PENDING"]
    assert done.status == "SUCCEEDED" and done.tasks["s2"].succeeded == 3
    # s2[2] started only after s1[2] succeeded; each s2 instance ran once.
    order = [(e.task, e.index, e.state) for e in history if isinstance(e, InstanceStateChanged)]
    assert order.index(("s1", 2, "SUCCEEDED")) < order.index(("s2", 2, "STAGING"))
    assert order.index(("s2", 0, "SUCCEEDED")) < order.index(("s1", 2, "SUCCEEDED"))
    assert [runs(tmp_path, "s2", i) for i in range(3)] == [["1"], ["1"], ["1"]]


async def test_by_index_cancels_the_counterpart_of_a_failed_instance(
    state_dir: Path, tmp_path: Path
) -> None:
    spec = {
        "name": "pipeline-broken",
        "tasks": [
            {
                "name": "s1",
                "instances": 3,
                "on_failure": "continue",
                "command": 'test "$AIOBATCH_INSTANCE_INDEX" != 1',
            },
            {
                "name": "s2",
                "instances": 3,
                "depends_on": [{"task": "s1", "by_index": True}],
                "command": mark(tmp_path),
            },
        ],
    }
    async with Runtime(state_dir, config=FOUR_SLOTS) as rt:
        job = await rt.submit(spec)
        done = await job.wait_for_completion()
        s2 = await job.get_task_result("s2")
        history = [event for _, event in await stored(rt, job.id)]

    assert done.status == "FAILED" and done.reason == "task_failed: s1"
    assert done.tasks["s1"].status == "FAILED"
    assert [(i.status, i.reason) for i in s2.instances or []] == [
        ("SUCCEEDED", None),
        ("CANCELLED", "upstream_failed: s1[1]"),
        ("SUCCEEDED", None),
    ]
    # s2[1] never ran: no start, no process, no record of an attempt (its siblings have
    # theirs). Its work dir may be there, made ahead with the job's first (dirs_ahead.py).
    assert [e.state for e in instance_changes(history, "s2", 1)] == ["CANCELLED"]
    assert runs(tmp_path, "s2", 1) == [] and runs(tmp_path, "s2", 0) == ["1"]
    journal = records.Journal(state_dir / "logs" / job.id / ".attempts")
    journal.refresh()
    started = sorted(index for _, task, index, _ in journal.records if task == "s2")
    assert started == [0, 2]


async def test_by_index_edges_survive_a_kill_9_of_the_service(
    service: Service, tmp_path: Path
) -> None:
    """Killed while s1[2] runs, one of s2[0], s2[1] runs and the other is open but not
    started (s2 runs one at a time): the new service adopts what runs, starts the open index,
    keeps s2[2] closed until s1[2] succeeds, and runs nothing twice."""
    service.config.write_text("[compute_envs.local]\nslots = 4\n")
    gate = tmp_path / "gate"
    held_at_2 = f'test "$AIOBATCH_INSTANCE_INDEX" != 2 || {{ {wait_for(gate)}; }}'
    spec = {
        "name": "pipeline-killed",
        "tasks": [
            {"name": "s1", "instances": 3, "command": f"{mark(tmp_path)}; {held_at_2}"},
            {
                "name": "s2",
                "instances": 3,
                "max_parallel": 1,
                "depends_on": [{"task": "s1", "by_index": True}],
                "command": f"{mark(tmp_path)}; {wait_for(gate)}",
            },
            {
                "name": "s3",
                "instances": 3,
                "depends_on": [{"task": "s2", "by_index": True}],
                "command": mark(tmp_path),
            },
        ],
    }
    wanted = {("s1", 0, "SUCCEEDED"), ("s1", 1, "SUCCEEDED"), ("s1", 2, "RUNNING")}
    await service.start()
    async with service.client() as client:
        async with client.subscribe() as events:
            job = await client.submit(spec)
            seen: set[tuple[str, int, str]] = set()
            running_before: int | None = None  # the s2 instance that started first
            with anyio.fail_after(20):
                async for event in events:
                    if isinstance(event, InstanceStateChanged):
                        seen.add((event.task, event.index, event.state))
                        if (event.task, event.state) == ("s2", "RUNNING"):
                            running_before = event.index
                    if running_before is not None and wanted <= seen:
                        break
        await client.list_jobs()  # answers once everything so far is committed
    await service.kill()
    await service.start()
    async with service.client() as client:
        during = await client.job_snapshot(job.id, instances=True)
        gate.touch()
        with anyio.fail_after(20):
            done = await client.wait_job(job.id)
        history = [entry.event for entry in await client.job_history(job.id)]

    s1 = [i.status for i in during.tasks["s1"].instances or []]
    assert s1 == ["SUCCEEDED", "SUCCEEDED", "RUNNING"]
    s2 = [i.status for i in during.tasks["s2"].instances or []]
    assert running_before in (0, 1)
    assert s2[running_before] == "RUNNING" and s2.count("PENDING") == 2, s2
    assert done.status == "SUCCEEDED"
    assert {(t, i): runs(tmp_path, t, i) for t in ("s1", "s2", "s3") for i in range(3)} == {
        (t, i): ["1"] for t in ("s1", "s2", "s3") for i in range(3)
    }
    order = [(e.task, e.index, e.state) for e in history if isinstance(e, InstanceStateChanged)]
    assert order.index(("s1", 2, "SUCCEEDED")) < order.index(("s2", 2, "STAGING"))
    for index in range(3):
        assert order.index(("s2", index, "SUCCEEDED")) < order.index(("s3", index, "STAGING"))


# -- conditions ------------------------------------------------------------------------------


def cleanup_spec(tmp_path: Path) -> dict[str, Any]:
    """``work[0]`` fails at once, ``work[1]`` waits for the file ``gate``; ``cleanup`` runs
    once ``work`` ends however it ends, ``publish`` only if it SUCCEEDED."""
    return {
        "name": "with-cleanup",
        "tasks": [
            {
                "name": "work",
                "instances": 2,
                "command": (
                    f'test "$AIOBATCH_INSTANCE_INDEX" = 1 || exit 1; {wait_for(tmp_path / "gate")}'
                ),
            },
            {
                "name": "cleanup",
                "depends_on": [{"task": "work", "when": "finished"}],
                "command": f'touch "{tmp_path}/cleaned"',
            },
            {"name": "publish", "depends_on": ["work"], "command": mark(tmp_path)},
        ],
    }


async def test_finished_runs_cleanup_after_a_failure_that_does_not_wind_the_job_down(
    state_dir: Path, tmp_path: Path
) -> None:
    async with Runtime(state_dir, config=FOUR_SLOTS) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(cleanup_spec(tmp_path))
            await until(events, instance_is("work", "FAILED", 0))
        # A task a `finished` dependent waits on goes on past its failure (on_failure:
        # continue): its other instance keeps running, to succeed.
        (tmp_path / "gate").touch()
        done = await job.wait_for_completion()
        work = await job.get_task_result("work")

    assert done.status == "FAILED" and done.reason == "task_failed: work"
    assert [i.status for i in work.instances or []] == ["FAILED", "SUCCEEDED"]
    assert done.tasks["cleanup"].status == "SUCCEEDED"
    assert (tmp_path / "cleaned").exists()
    assert done.tasks["publish"].status == "SKIPPED"
    assert done.tasks["publish"].reason == "upstream_failed: work"
    assert runs(tmp_path, "publish", 0) == []


async def test_finished_cleanup_through_the_cli_exits_1(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: cli-cleanup\n"
        "tasks:\n"
        "  - {name: work, command: 'exit 1'}\n"
        "  - name: cleanup\n"
        "    depends_on: [{task: work, when: finished}]\n"
        f"    command: 'touch \"{tmp_path}/cleaned\"'\n"
        "  - {name: publish, depends_on: [work], command: 'true'}\n"
    )
    code, out, err = await aiobatch("run", spec, "--state-dir", tmp_path / "s", "--json", "--quiet")
    assert code == 1, err
    result = json.loads(out)
    assert (result["status"], result["reason"]) == ("FAILED", "task_failed: work")
    statuses = {name: task["status"] for name, task in result["tasks"].items()}
    assert statuses == {"work": "FAILED", "cleanup": "SUCCEEDED", "publish": "SKIPPED"}
    assert (tmp_path / "cleaned").exists()


async def test_a_fail_job_failure_elsewhere_cancels_a_finished_dependent(
    state_dir: Path, tmp_path: Path
) -> None:
    spec = {
        "name": "wound-down",
        "tasks": [
            {"name": "slow", "command": wait_for(tmp_path / "never")},
            {"name": "boom", "command": f"{wait_for(tmp_path / 'go')}; exit 1"},  # fail_job
            {
                "name": "cleanup",
                "depends_on": [{"task": "slow", "when": "finished"}],
                "command": mark(tmp_path),
            },
        ],
    }
    async with Runtime(state_dir, config=FOUR_SLOTS) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(spec)
            await until_seen(events, {("slow", 0, "RUNNING"), ("boom", 0, "RUNNING")})
        (tmp_path / "go").touch()
        done = await job.wait_for_completion()

    assert done.status == "FAILED" and done.reason == "task_failed: boom"
    assert done.tasks["slow"].status == "CANCELLED"
    assert (done.tasks["cleanup"].status, done.tasks["cleanup"].reason) == (
        "CANCELLED",
        "task_failed: boom",
    )
    assert runs(tmp_path, "cleanup", 0) == []


async def test_partly_succeeded_needs_one_success(state_dir: Path, tmp_path: Path) -> None:
    spec = {
        "name": "partly",
        "tasks": [
            # One of three succeeds; none of two.
            {"name": "some", "instances": 3, "command": 'test "$AIOBATCH_INSTANCE_INDEX" = 2'},
            {"name": "none", "instances": 2, "command": "exit 1"},
            {
                "name": "merge",
                "depends_on": [{"task": "some", "when": "partly_succeeded"}],
                "command": mark(tmp_path),
            },
            {
                "name": "merge_none",
                "depends_on": [{"task": "none", "when": "partly_succeeded"}],
                "command": mark(tmp_path),
            },
        ],
    }
    async with Runtime(state_dir, config=FOUR_SLOTS) as rt:
        job = await rt.submit(spec)
        done = await job.wait_for_completion()
        some = await job.get_task_result("some")

    # Neither failure wound the job down: every instance of `some` ran to its own end.
    assert [i.status for i in some.instances or []] == ["FAILED", "FAILED", "SUCCEEDED"]
    assert done.tasks["merge"].status == "SUCCEEDED" and runs(tmp_path, "merge", 0) == ["1"]
    assert (done.tasks["merge_none"].status, done.tasks["merge_none"].reason) == (
        "SKIPPED",
        "upstream_failed: none",
    )
    assert runs(tmp_path, "merge_none", 0) == []
    assert (done.status, done.reason) == ("FAILED", "task_failed: some")  # the first in spec order


# -- retry backoff ---------------------------------------------------------------------------


def fails_once(root: Path, delay: str) -> dict[str, Any]:
    """One instance whose first attempt exits 1 (leaving a marker), retried after ``delay``."""
    marker = root / "failed-once"
    return {
        "name": "flaky",
        "tasks": [
            {
                "name": "t",
                "retries": {"limit": 2, "backoff": {"delay": delay}},
                "command": f'{mark(root)}; test -e "{marker}" || {{ touch "{marker}"; exit 1; }}',
            }
        ],
    }


def check_backoff(events: list[Any], delay_s: float) -> InstanceStateChanged:
    """The instance waited out its backoff once, between attempt 1 and 2; returns the wait."""
    changes = instance_changes(events, "t", 0)
    waits = [e for e in changes if e.state == "PENDING" and e.reason == "backoff"]
    assert len(waits) == 1, changes
    [wait] = waits
    assert wait.attempt == 2 and wait.not_before is not None
    [ended] = [e for e in changes if e.state == "UPLOADING" and e.attempt == 1]
    assert ended.exit_code == 1
    # Counted from the attempt's end.
    assert wait.ts + delay_s - 0.05 <= wait.not_before <= wait.ts + delay_s + 0.05
    assert wait.not_before >= ended.ts + delay_s
    starts = [e for e in changes if e.state == "STAGING"]
    assert [e.attempt for e in starts] == [1, 2]
    assert starts[1].ts >= wait.not_before
    assert changes[-1].state == "SUCCEEDED" and changes[-1].attempt == 2
    return wait


async def test_backoff_waits_before_the_next_attempt(state_dir: Path, tmp_path: Path) -> None:
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(fails_once(tmp_path, "1s"))
            wait = await until(events, instance_is("t", "PENDING"))
            snapshot = await job.snapshot()
        done = await job.wait_for_success()
        history = [event for _, event in await stored(rt, job.id)]

    assert isinstance(wait, InstanceStateChanged) and wait.reason == "backoff"
    assert snapshot.tasks["t"].reason == "backoff"
    stored_wait = check_backoff(history, 1.0)
    assert stored_wait.not_before is not None and stored_wait.not_before == wait.not_before
    # Woken by its own timer, not long after the backoff ended.
    changes = instance_changes(history, "t", 0)
    [second] = [e for e in changes if e.state == "STAGING" and e.attempt == 2]
    assert second.ts - stored_wait.not_before < 3.0
    assert done.status == "SUCCEEDED"
    assert runs(tmp_path, "t", 0) == ["1", "2"]
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        row = db.execute(
            "SELECT state, attempt, not_before FROM instances WHERE job_id = ?", (job.id,)
        ).fetchone()
    assert row == ("SUCCEEDED", 2, None)  # a started attempt waits for nothing


async def test_backoff_survives_a_kill_9_of_the_service(service: Service, tmp_path: Path) -> None:
    delay_s = 4.0
    await service.start()
    async with service.client() as client:
        async with client.subscribe() as events:
            job = await client.submit(fails_once(tmp_path, f"{delay_s:g}s"))
            wait = await until(events, instance_is("t", "PENDING"))
        await client.list_jobs()  # answers once everything so far is committed
    assert isinstance(wait, InstanceStateChanged) and wait.reason == "backoff"
    assert wait.not_before is not None
    with sqlite3.connect(service.state_dir / "aiobatch.db") as db:
        row = db.execute(
            "SELECT state, reason, attempt, not_before FROM instances WHERE job_id = ?", (job.id,)
        ).fetchone()
    assert row == ("PENDING", "backoff", 2, wait.not_before)

    await service.kill()
    await service.start()
    # Restarted well inside the backoff: recovery itself must hold the attempt back.
    assert time.time() < wait.not_before - 0.5, "the restart took longer than the backoff"
    async with service.client() as client:
        with anyio.fail_after(30):
            done = await client.wait_job(job.id)
        result = await client.task_result(job.id, "t")
        # Its stored history: the service commits it before it answers.
        events_stored = [entry.event for entry in await client.job_history(job.id)]

    assert done.status == "SUCCEEDED"
    assert [(i.status, i.attempts) for i in result.instances or []] == [("SUCCEEDED", 2)]
    check_backoff(events_stored, delay_s)
    # Not started twice: one run per attempt, and the job started (and ended) once.
    assert runs(tmp_path, "t", 0) == ["1", "2"]
    job_states = [e.state for e in events_stored if isinstance(e, JobStateChanged)]
    assert job_states == ["RUNNING", "SUCCEEDED"]


async def test_a_stop_during_a_backoff_cancels_the_wait_at_once(
    state_dir: Path, tmp_path: Path
) -> None:
    # Far less than the backoff: neither the stop nor the runtime's close waits it out.
    with anyio.fail_after(15):
        async with Runtime(state_dir) as rt:
            async with rt.subscribe() as events:
                job = await rt.submit(fails_once(tmp_path, "60s"))
                await until(events, instance_is("t", "PENDING"))
            await job.stop()
            done = await job.wait_for_completion()

    assert (done.status, done.reason) == ("CANCELLED", "stopped_by_user")
    assert runs(tmp_path, "t", 0) == ["1"]
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        row = db.execute(
            "SELECT state, reason, attempt FROM instances WHERE job_id = ?", (job.id,)
        ).fetchone()
    assert row == ("CANCELLED", "stopped_by_user", 2)


async def test_a_cancelled_wait_keeps_no_not_before(state_dir: Path, tmp_path: Path) -> None:
    async with Runtime(state_dir) as rt:
        async with rt.subscribe() as events:
            job = await rt.submit(fails_once(tmp_path, "60s"))
            await until(events, instance_is("t", "PENDING"))
        await job.stop()
        await job.wait_for_completion()
        history = [event for _, event in await stored(rt, job.id)]
    [cancelled] = [e for e in instance_changes(history, "t", 0) if e.state == "CANCELLED"]
    with sqlite3.connect(state_dir / "aiobatch.db") as db:
        [(not_before,)] = db.execute(
            "SELECT not_before FROM instances WHERE job_id = ?", (job.id,)
        ).fetchall()
    # not_before means "PENDING, waiting out a backoff until then": an ended wait has none.
    assert (cancelled.not_before, not_before) == (None, None)


# -- spec errors -----------------------------------------------------------------------------


async def test_a_by_index_count_mismatch_is_refused_with_its_field_path(tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "name: bad\n"
        "tasks:\n"
        "  - {name: s1, instances: 3, command: 'true'}\n"
        "  - {name: s2, instances: 2, command: 'true', depends_on: [{task: s1, by_index: true}]}\n"
    )
    code, out, err = await aiobatch("validate", spec)
    assert code == 2 and out == ""
    assert "$.tasks[1].depends_on[0].by_index: 's2' has 2 instances and 's1' 3" in err
    assert "Traceback" not in err
    code, _, err = await aiobatch("run", spec, "--state-dir", tmp_path / "s")
    assert code == 2 and "$.tasks[1].depends_on[0].by_index" in err
    assert not (tmp_path / "s").exists()  # nothing half-stored
